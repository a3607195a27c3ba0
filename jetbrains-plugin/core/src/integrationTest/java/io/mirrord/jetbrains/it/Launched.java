package io.mirrord.jetbrains.it;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * A program launched as the IDE launches it: an argument vector and exactly the environment
 * given (the IDE's, with the session's applied). Its stdout and stderr lines are kept.
 */
final class Launched implements AutoCloseable {
    private final String name;
    private final Process process;
    private final List<String> out = new ArrayList<>();
    private final List<String> err = new ArrayList<>();

    Launched(String name, List<String> argv, Map<String, String> env) throws IOException {
        this.name = name;
        ProcessBuilder pb = new ProcessBuilder(argv);
        pb.environment().clear();
        pb.environment().putAll(env);
        process = pb.start();
        process.getOutputStream().close();
        pump(process.getInputStream(), out);
        pump(process.getErrorStream(), err);
    }

    private void pump(java.io.InputStream in, List<String> lines) {
        Thread t = new Thread(() -> {
            try (BufferedReader r = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8))) {
                String line;
                while ((line = r.readLine()) != null) {
                    synchronized (this) {
                        lines.add(line);
                        notifyAll();
                    }
                }
            } catch (IOException ignored) {
                // The process is gone.
            }
            synchronized (this) {
                notifyAll();
            }
        }, name + " output");
        t.setDaemon(true);
        t.start();
    }

    long pid() {
        return process.pid();
    }

    /** The first stdout line containing {@code needle}, waiting for it. */
    synchronized String waitLine(String needle, Duration timeout) throws InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (true) {
            for (String l : out) {
                if (l.contains(needle)) {
                    return l;
                }
            }
            long left = deadline - System.nanoTime();
            if (left <= 0 || (!process.isAlive() && ended())) {
                throw new AssertionError(name + ": no line containing \"" + needle + "\" within " + timeout
                        + (process.isAlive() ? "" : " (it exited with " + process.exitValue() + ")")
                        + "; stdout " + out + "; stderr " + err);
            }
            wait(Math.max(1, Math.min(left / 1_000_000, 100)));
        }
    }

    private boolean ended() {
        // Both pumps have seen EOF once the process exited and its pipes are drained.
        return !process.isAlive();
    }

    /** Waits for the exit; returns the exit code. */
    int waitExit(Duration timeout) throws InterruptedException {
        if (!process.waitFor(timeout.toMillis(), TimeUnit.MILLISECONDS)) {
            throw new AssertionError(name + " did not exit within " + timeout + "; stdout " + stdout() + "; stderr " + stderr());
        }
        return process.exitValue();
    }

    synchronized List<String> stdout() {
        return List.copyOf(out);
    }

    synchronized List<String> stderr() {
        return List.copyOf(err);
    }

    @Override
    public void close() {
        process.destroyForcibly();
        try {
            process.waitFor(10, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
