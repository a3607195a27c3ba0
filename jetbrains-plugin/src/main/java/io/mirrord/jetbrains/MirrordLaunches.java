package io.mirrord.jetbrains;

import com.intellij.execution.ExecutionException;
import com.intellij.openapi.application.ApplicationManager;
import com.intellij.openapi.progress.ProcessCanceledException;
import com.intellij.openapi.progress.ProgressManager;
import com.intellij.openapi.project.Project;
import io.mirrord.jetbrains.core.LaunchRules;
import io.mirrord.jetbrains.core.MirrordException;
import io.mirrord.jetbrains.core.MirrordService;
import java.util.Map;

/**
 * Runs the core's launch flow ({@link MirrordService#prepareLaunch}) for a run configuration
 * extension: off the UI thread (with a modal progress when called on it, so the target picker
 * can still show), and with the core's outcome turned into what the IDE expects: the launch's
 * environment, or an {@link ExecutionException} that aborts the launch with the core's message.
 */
public final class MirrordLaunches {
    private MirrordLaunches() {}

    /**
     * The environment changes for {@code launch}, or {@code null} when mirrord does not run for it.
     *
     * @throws ExecutionException when the session cannot start or the user cancelled the picker
     */
    public static LaunchRules.LaunchEnvironment prepare(Project project, LaunchRules.Launch launch) throws ExecutionException {
        MirrordProjectService ps = MirrordProjectService.getInstance(project);
        MirrordService.Prepared prepared;
        try {
            MirrordService core = ps.core();
            if (ApplicationManager.getApplication().isDispatchThread()) {
                prepared = ProgressManager.getInstance().runProcessWithProgressSynchronously(
                        () -> core.prepareLaunch(ps.workspaceFolder(), launch), "mirrord: starting the session", false, project);
            } else {
                prepared = core.prepareLaunch(ps.workspaceFolder(), launch);
            }
        } catch (MirrordException e) {
            throw new ExecutionException("mirrord: " + e.getMessage(), e);
        }
        if (prepared.cancelled()) {
            throw new ExecutionException("mirrord: no target was chosen; the launch is cancelled");
        }
        return prepared.active() ? prepared.environment() : null;
    }

    /**
     * {@link #prepare} for extension points declared in Kotlin without {@code @Throws}, whose Java
     * overrides cannot throw {@link ExecutionException}: the launch is cancelled instead (the
     * user was already told why by a balloon).
     */
    public static LaunchRules.LaunchEnvironment prepareOrCancel(Project project, LaunchRules.Launch launch) {
        try {
            return prepare(project, launch);
        } catch (ExecutionException e) {
            MirrordNotifier.notify(project, MirrordService.Level.WARNING, e.getMessage());
            throw new ProcessCanceledException(e);
        }
    }

    /** The whole environment the process gets when it must not inherit some of the IDE's. */
    public static Map<String, String> wholeEnvironment(LaunchRules.LaunchEnvironment le) {
        return LaunchRules.processEnvironment(System.getenv(), le);
    }

    public static boolean needsWholeEnvironment(LaunchRules.LaunchEnvironment le) {
        return LaunchRules.needsFullEnvironment(System.getenv(), le);
    }
}
