package io.mirrord.jetbrains;

import com.intellij.openapi.project.Project;
import com.intellij.openapi.util.NlsContexts;
import com.intellij.openapi.wm.StatusBar;
import com.intellij.openapi.wm.StatusBarWidget;
import com.intellij.openapi.wm.StatusBarWidgetFactory;
import com.intellij.openapi.wm.WindowManager;
import com.intellij.util.Consumer;
import io.mirrord.jetbrains.core.MirrordService;
import java.awt.event.MouseEvent;
import org.jetbrains.annotations.NotNull;
import org.jetbrains.annotations.Nullable;

/**
 * The status-bar toggle: shows whether mirrord is on and flips it on click. Its text and
 * tooltip are {@link MirrordService#statusText()} and {@link MirrordService#statusTooltip()}.
 */
public final class MirrordStatusBarWidgetFactory implements StatusBarWidgetFactory {
    public static final String ID = "io.mirrord.jetbrains.status";

    @Override
    public @NotNull String getId() {
        return ID;
    }

    @Override
    public @NlsContexts.ConfigurableName @NotNull String getDisplayName() {
        return "mirrord";
    }

    @Override
    public boolean isAvailable(@NotNull Project project) {
        return true;
    }

    @Override
    public @NotNull StatusBarWidget createWidget(@NotNull Project project) {
        return new Widget(project);
    }

    /** Redraws the widget after the toggle changed elsewhere (the toolbar action). */
    public static void refresh(Project project) {
        StatusBar bar = WindowManager.getInstance().getStatusBar(project);
        if (bar != null) {
            bar.updateWidget(ID);
        }
    }

    private static final class Widget implements StatusBarWidget, StatusBarWidget.TextPresentation {
        private final Project project;
        private StatusBar bar;

        Widget(Project project) {
            this.project = project;
        }

        private MirrordService core() {
            try {
                return MirrordProjectService.getInstance(project).core();
            } catch (io.mirrord.jetbrains.core.MirrordException e) {
                return null;
            }
        }

        @Override
        public @NotNull String ID() {
            return ID;
        }

        @Override
        public void install(@NotNull StatusBar statusBar) {
            bar = statusBar;
        }

        @Override
        public @Nullable WidgetPresentation getPresentation() {
            return this;
        }

        @Override
        public @NotNull String getText() {
            MirrordService core = core();
            return core != null ? core.statusText() : "mirrord: not found";
        }

        @Override
        public float getAlignment() {
            return java.awt.Component.CENTER_ALIGNMENT;
        }

        @Override
        public @Nullable String getTooltipText() {
            MirrordService core = core();
            return core != null ? core.statusTooltip() : "mirrord-server was not found: set its path in Settings | Tools | mirrord";
        }

        @Override
        public @Nullable Consumer<MouseEvent> getClickConsumer() {
            return event -> {
                MirrordService core = core();
                if (core != null) {
                    core.toggle();
                }
                if (bar != null) {
                    bar.updateWidget(ID);
                }
            };
        }

        @Override
        public void dispose() {
            bar = null;
        }
    }
}
