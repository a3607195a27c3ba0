package io.mirrord.jetbrains;

import com.intellij.openapi.actionSystem.ActionUpdateThread;
import com.intellij.openapi.actionSystem.AnAction;
import com.intellij.openapi.actionSystem.AnActionEvent;
import com.intellij.openapi.progress.ProgressIndicator;
import com.intellij.openapi.progress.ProgressManager;
import com.intellij.openapi.progress.Task;
import com.intellij.openapi.project.DumbAware;
import com.intellij.openapi.project.Project;
import io.mirrord.jetbrains.core.MirrordException;
import io.mirrord.jetbrains.core.MirrordService;
import org.jetbrains.annotations.NotNull;

/** "Select target": the picker ({@link MirrordService#pickTarget}) outside a launch. */
public final class MirrordSelectTargetAction extends AnAction implements DumbAware {
    @Override
    public void actionPerformed(@NotNull AnActionEvent e) {
        Project project = e.getProject();
        if (project == null) {
            return;
        }
        ProgressManager.getInstance().run(new Task.Backgroundable(project, "mirrord: listing targets", true) {
            @Override
            public void run(@NotNull ProgressIndicator indicator) {
                MirrordProjectService ps = MirrordProjectService.getInstance(project);
                try {
                    String target = ps.core().pickTarget(ps.workspaceFolder());
                    if (target != null) {
                        MirrordNotifier.notify(project, MirrordService.Level.INFO, "mirrord: " + target
                                + " is now the most recent target (set \"target\": \"" + target
                                + "\" in .mirrord/mirrord.json to always use it).");
                    }
                } catch (MirrordException ex) {
                    MirrordNotifier.notify(project, MirrordService.Level.ERROR, "mirrord: could not list targets: " + ex.getMessage());
                }
            }
        });
    }

    @Override
    public @NotNull ActionUpdateThread getActionUpdateThread() {
        return ActionUpdateThread.BGT;
    }
}
