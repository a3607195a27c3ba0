package io.mirrord.jetbrains;

import com.intellij.openapi.Disposable;
import com.intellij.openapi.project.Project;
import io.mirrord.jetbrains.core.Daemon;
import io.mirrord.jetbrains.core.MirrordException;
import io.mirrord.jetbrains.core.MirrordService;
import io.mirrord.jetbrains.core.Targets;
import java.util.List;

/**
 * The project's {@link MirrordService} (every decision) with the IDE as its {@link
 * MirrordService.Ui}: balloons, the target picker, the progress bar. Created on first use;
 * disposing the project stops the daemon (its sessions end).
 */
public final class MirrordProjectService implements Disposable {
    private final Project project;
    private MirrordService service;
    private final MirrordProgress progress;

    public MirrordProjectService(Project project) {
        this.project = project;
        this.progress = new MirrordProgress(project);
    }

    public static MirrordProjectService getInstance(Project project) {
        return project.getService(MirrordProjectService.class);
    }

    /** The core service, created with the daemon command of the current settings. */
    public synchronized MirrordService core() throws MirrordException {
        if (service == null) {
            Daemon.Command command = MirrordAppSettings.getInstance().daemonCommand();
            service = new MirrordService(command, new IdeUi(), MirrordProjectState.getInstance(project));
        }
        return service;
    }

    /** The core service if it exists (views show nothing before the first use). */
    public synchronized MirrordService coreIfStarted() {
        return service;
    }

    public String workspaceFolder() {
        return project.getBasePath();
    }

    @Override
    public synchronized void dispose() {
        if (service != null) {
            service.close();
            service = null;
        }
    }

    private final class IdeUi implements MirrordService.Ui {
        @Override
        public void notify(MirrordService.Level level, String message) {
            MirrordNotifier.notify(project, level, message);
        }

        @Override
        public String chooseTarget(List<Targets.Item> items) {
            return MirrordTargetPicker.choose(project, items);
        }

        @Override
        public void begin(String token, String title) {
            progress.begin(token, title);
        }

        @Override
        public void report(String token, String message) {
            progress.report(token, message);
        }

        @Override
        public void end(String token, String message) {
            progress.end(token, message);
        }
    }
}
