package io.mirrord.jetbrains;

import com.intellij.openapi.progress.ProgressIndicator;
import com.intellij.openapi.progress.ProgressManager;
import com.intellij.openapi.progress.Task;
import com.intellij.openapi.project.Project;
import io.mirrord.jetbrains.core.ProgressTracker;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.jetbrains.annotations.NotNull;

/**
 * The daemon's work-done progress ({@link ProgressTracker} decides which tokens and when) in the
 * IDE's progress bar: one background task per token, running until the token ends.
 */
public final class MirrordProgress implements ProgressTracker.Listener {
    /** Longest a progress is shown without an end (the daemon's agent start is bounded below this). */
    private static final long MAX_SECONDS = 300;

    private final Project project;
    /** token → the running task's indicator and its end signal. */
    private final Map<String, Running> running = new ConcurrentHashMap<>();

    private record Running(CountDownLatch ended, ProgressIndicator[] indicator) {}

    public MirrordProgress(Project project) {
        this.project = project;
    }

    @Override
    public void begin(String token, String title) {
        Running r = new Running(new CountDownLatch(1), new ProgressIndicator[1]);
        running.put(token, r);
        ProgressManager.getInstance().run(new Task.Backgroundable(project, title, false) {
            @Override
            public void run(@NotNull ProgressIndicator indicator) {
                indicator.setIndeterminate(true);
                r.indicator()[0] = indicator;
                try {
                    r.ended().await(MAX_SECONDS, TimeUnit.SECONDS);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
        });
    }

    @Override
    public void report(String token, String message) {
        Running r = running.get(token);
        if (r != null && r.indicator()[0] != null) {
            r.indicator()[0].setText2(message);
        }
    }

    @Override
    public void end(String token, String message) {
        Running r = running.remove(token);
        if (r != null) {
            r.ended().countDown();
        }
    }
}
