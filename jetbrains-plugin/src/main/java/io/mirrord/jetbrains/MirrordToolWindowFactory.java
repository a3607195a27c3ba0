package io.mirrord.jetbrains;

import com.intellij.openapi.project.DumbAware;
import com.intellij.openapi.project.Project;
import com.intellij.openapi.wm.ToolWindow;
import com.intellij.openapi.wm.ToolWindowFactory;
import com.intellij.ui.content.Content;
import com.intellij.ui.content.ContentFactory;
import io.mirrord.jetbrains.core.MirrordException;
import io.mirrord.jetbrains.core.MirrordService;
import javax.swing.JLabel;
import javax.swing.SwingConstants;
import org.jetbrains.annotations.NotNull;

/**
 * The "mirrord" tool window: the live traffic table ({@link MirrordTrafficPanel}) and the
 * sessions ({@link MirrordSessionsPanel}), both views of the project's {@link MirrordService}.
 */
public final class MirrordToolWindowFactory implements ToolWindowFactory, DumbAware {
    @Override
    public void createToolWindowContent(@NotNull Project project, @NotNull ToolWindow toolWindow) {
        ContentFactory contents = ContentFactory.getInstance();
        MirrordService core;
        try {
            core = MirrordProjectService.getInstance(project).core();
        } catch (MirrordException e) {
            JLabel missing = new JLabel("mirrord: " + e.getMessage(), SwingConstants.CENTER);
            toolWindow.getContentManager().addContent(contents.createContent(missing, "", false));
            return;
        }
        MirrordTrafficPanel traffic = new MirrordTrafficPanel(core.traffic());
        Content trafficContent = contents.createContent(traffic, "Traffic", false);
        trafficContent.setDisposer(traffic);
        toolWindow.getContentManager().addContent(trafficContent);
        MirrordSessionsPanel sessions = new MirrordSessionsPanel(project, core);
        Content sessionsContent = contents.createContent(sessions, "Sessions", false);
        sessionsContent.setDisposer(sessions);
        toolWindow.getContentManager().addContent(sessionsContent);
    }
}
