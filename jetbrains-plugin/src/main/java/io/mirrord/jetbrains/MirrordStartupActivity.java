package io.mirrord.jetbrains;

import com.intellij.openapi.project.Project;
import com.intellij.openapi.startup.StartupActivity;
import io.mirrord.jetbrains.core.MirrordException;
import io.mirrord.jetbrains.core.MirrordService;
import org.jetbrains.annotations.NotNull;

/**
 * Starts the daemon in the background when a project opens with mirrord on, so the first launch
 * does not wait for it ({@link MirrordService#startInBackground}).
 */
public final class MirrordStartupActivity implements StartupActivity.DumbAware {
    @Override
    public void runActivity(@NotNull Project project) {
        if (!MirrordProjectState.getInstance(project).enabled()) {
            return;
        }
        try {
            MirrordProjectService.getInstance(project).core().startInBackground();
        } catch (MirrordException e) {
            MirrordNotifier.notify(project, MirrordService.Level.WARNING, "mirrord: " + e.getMessage());
        }
    }
}
