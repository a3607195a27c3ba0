package io.mirrord.jetbrains;

import com.intellij.openapi.actionSystem.ActionUpdateThread;
import com.intellij.openapi.actionSystem.AnActionEvent;
import com.intellij.openapi.actionSystem.ToggleAction;
import com.intellij.openapi.project.DumbAware;
import com.intellij.openapi.project.Project;
import io.mirrord.jetbrains.core.MirrordService;
import org.jetbrains.annotations.NotNull;

/** The toolbar toggle: mirrord on or off for the project's launches ({@link MirrordService#toggle}). */
public final class MirrordToggleAction extends ToggleAction implements DumbAware {
    @Override
    public boolean isSelected(@NotNull AnActionEvent e) {
        Project project = e.getProject();
        return project != null && MirrordProjectState.getInstance(project).enabled();
    }

    @Override
    public void setSelected(@NotNull AnActionEvent e, boolean state) {
        Project project = e.getProject();
        if (project == null) {
            return;
        }
        MirrordProjectState.getInstance(project).setEnabled(state);
        MirrordStatusBarWidgetFactory.refresh(project);
    }

    @Override
    public void update(@NotNull AnActionEvent e) {
        super.update(e);
        Project project = e.getProject();
        if (project != null) {
            MirrordService core = MirrordProjectService.getInstance(project).coreIfStarted();
            boolean on = MirrordProjectState.getInstance(project).enabled();
            e.getPresentation().setText(core != null ? core.statusText() : on ? "mirrord: on" : "mirrord: off");
        }
    }

    @Override
    public @NotNull ActionUpdateThread getActionUpdateThread() {
        return ActionUpdateThread.BGT;
    }
}
