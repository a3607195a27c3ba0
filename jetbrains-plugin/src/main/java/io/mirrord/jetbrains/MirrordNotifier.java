package io.mirrord.jetbrains;

import com.intellij.notification.NotificationGroupManager;
import com.intellij.notification.NotificationType;
import com.intellij.openapi.project.Project;
import io.mirrord.jetbrains.core.MirrordService;

/** Balloons in the "mirrord" notification group; what to say and how loud is the core's. */
public final class MirrordNotifier {
    public static final String GROUP = "mirrord";

    private MirrordNotifier() {}

    public static void notify(Project project, MirrordService.Level level, String message) {
        NotificationType type = switch (level) {
            case INFO -> NotificationType.INFORMATION;
            case WARNING -> NotificationType.WARNING;
            case ERROR -> NotificationType.ERROR;
        };
        NotificationGroupManager.getInstance().getNotificationGroup(GROUP).createNotification(message, type).notify(project);
    }
}
