package io.mirrord.jetbrains.core;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonNull;
import com.google.gson.JsonObject;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Clock;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.List;
import java.util.Map;

/**
 * {@code mirrord-server --stdio} as a child process of the IDE: started on first use with the
 * LSP lifecycle ({@code initialize}, {@code initialized}), stopped with {@code shutdown} +
 * {@code exit}, and started again on the next use after it died.
 *
 * <p>A daemon's sessions die with it (its agents exit when their lifeline closes). What
 * "re-attach" means after a restart is decided by {@link MirrordService}: the sessions are
 * reported as ended and the next launch of the same run configuration starts a new session on
 * the same target.
 *
 * <p>Restarts are bounded like the VS Code extension's: after {@link #MAX_RESTARTS} unexpected
 * deaths within {@link #RESTART_WINDOW}, requests fail until {@link #restart()} is called.
 */
public final class Daemon implements AutoCloseable {
    public static final int MAX_RESTARTS = 5;
    public static final Duration RESTART_WINDOW = Duration.ofMinutes(3);
    public static final Duration INITIALIZE_TIMEOUT = Duration.ofSeconds(30);
    public static final Duration SHUTDOWN_TIMEOUT = Duration.ofSeconds(5);
    /** stderr lines kept to explain a death. */
    private static final int STDERR_TAIL = 20;

    /** How to start the daemon: the argument vector (never a shell string) and extra env. */
    public record Command(List<String> argv, Map<String, String> env) {}

    /** What the IDE hears from the daemon besides answers. */
    public interface Listener {
        /** {@code mirrord/traffic}, {@code mirrord/sessionChanged}, {@code publishDiagnostics}... */
        void onNotification(String method, JsonElement params);

        /** A daemon process is running and initialized ({@code generation} counts starts). */
        void onStarted(long generation, long pid);

        /**
         * The daemon of {@code generation} died unexpectedly; {@code willRestart} is false
         * when the restart budget is spent.
         */
        void onDied(long generation, String reason, boolean willRestart);

        /** Unreadable output from the daemon (skipped). */
        void onProtocolError(String problem);
    }

    private final Command command;
    private final Listener listener;
    private final ProgressTracker progress;
    private final Clock clock;

    // Guarded by `this`.
    private Process process;
    private JsonRpcClient client;
    private long generation;
    private boolean stopping;
    private boolean gaveUp;
    private final Deque<Long> deaths = new ArrayDeque<>();
    private final Deque<String> stderrTail = new ArrayDeque<>();

    public Daemon(Command command, Listener listener, ProgressTracker progress) {
        this(command, listener, progress, Clock.systemUTC());
    }

    Daemon(Command command, Listener listener, ProgressTracker progress, Clock clock) {
        this.command = command;
        this.listener = listener;
        this.progress = progress;
        this.clock = clock;
    }

    /** A request to the running daemon (started, or restarted, first if needed). */
    public JsonElement request(String method, Object params, Duration timeout) throws MirrordException {
        return ensureRunning().request(method, params, timeout);
    }

    /** The running daemon's client, starting it if it is not running. */
    public synchronized JsonRpcClient ensureRunning() throws MirrordException {
        if (client != null && !client.isClosed()) {
            return client;
        }
        if (gaveUp) {
            throw new MirrordException("mirrord-server stopped " + MAX_RESTARTS + " times within "
                    + RESTART_WINDOW.toMinutes() + " minutes and is not restarted; restart it from the mirrord tool window");
        }
        start();
        return client;
    }

    public synchronized boolean isRunning() {
        return client != null && !client.isClosed();
    }

    /** The running daemon's pid, or -1. */
    public synchronized long pid() {
        return isRunning() && process != null ? process.pid() : -1;
    }

    public synchronized long generation() {
        return generation;
    }

    /** Stops the daemon if it runs and starts it again, forgetting earlier deaths. */
    public void restart() throws MirrordException {
        stop();
        synchronized (this) {
            deaths.clear();
            gaveUp = false;
        }
        ensureRunning();
    }

    private void start() throws MirrordException {
        // Invariant: called with the monitor held, so one daemon starts at a time.
        stderrTail.clear();
        ProcessBuilder pb = new ProcessBuilder(command.argv());
        pb.environment().putAll(command.env());
        // What the IDE itself runs with must not reach the daemon (it would preload the layer).
        pb.environment().remove("LD_PRELOAD");
        pb.environment().remove("MIRRORD_ACTIVE");
        pb.redirectInput(ProcessBuilder.Redirect.PIPE).redirectOutput(ProcessBuilder.Redirect.PIPE);
        Process p;
        try {
            p = pb.start();
        } catch (IOException e) {
            throw new MirrordException("mirrord-server could not be started (" + String.join(" ", command.argv()) + "): " + e.getMessage(), e);
        }
        long gen = ++generation;
        process = p;
        stopping = false;
        Thread stderr = new Thread(() -> drainStderr(p), "mirrord-server stderr");
        stderr.setDaemon(true);
        stderr.start();
        JsonRpcClient c = new JsonRpcClient("mirrord-server", p.getInputStream(), p.getOutputStream(), new Handler(gen));
        client = c;
        // The pipe may stay open after the process died (a child holding it): the exit decides.
        p.onExit().thenRun(() -> c.close("mirrord-server exited with code " + p.exitValue() + stderrSuffix()));
        JsonObject init = new JsonObject();
        init.addProperty("processId", ProcessHandle.current().pid());
        JsonObject info = new JsonObject();
        info.addProperty("name", "mirrord for JetBrains IDEs");
        init.add("clientInfo", info);
        init.add("rootUri", JsonNull.INSTANCE);
        JsonObject window = new JsonObject();
        window.addProperty("workDoneProgress", true);
        JsonObject caps = new JsonObject();
        caps.add("window", window);
        init.add("capabilities", caps);
        try {
            JsonElement result = c.request("initialize", init, INITIALIZE_TIMEOUT);
            String server = result instanceof JsonObject o ? Json.str(Json.obj(o, "serverInfo"), "name", "") : "";
            if (!server.equals("mirrord-server")) {
                throw new MirrordException(String.join(" ", command.argv()) + " is not mirrord-server (it calls itself \"" + server + "\")");
            }
            c.notify("initialized", new JsonObject());
        } catch (MirrordException | IOException e) {
            stopping = true;
            p.destroyForcibly();
            c.close("initialize failed");
            throw e instanceof MirrordException m ? m
                    : new MirrordException("mirrord-server did not start: " + e.getMessage() + stderrSuffix(), e);
        }
        listener.onStarted(gen, p.pid());
    }

    private void drainStderr(Process p) {
        try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getErrorStream(), StandardCharsets.UTF_8))) {
            String line;
            while ((line = r.readLine()) != null) {
                synchronized (stderrTail) {
                    stderrTail.addLast(line);
                    while (stderrTail.size() > STDERR_TAIL) {
                        stderrTail.removeFirst();
                    }
                }
            }
        } catch (IOException ignored) {
            // The process is gone.
        }
    }

    private String stderrSuffix() {
        List<String> lines;
        synchronized (stderrTail) {
            lines = new ArrayList<>(stderrTail);
        }
        return lines.isEmpty() ? "" : "; its last output: " + String.join(" | ", lines);
    }

    /** The connection of generation {@code gen} closed. */
    private void closed(long gen, String reason) {
        boolean willRestart;
        synchronized (this) {
            if (gen != generation || stopping) {
                return;
            }
            long now = clock.millis();
            deaths.addLast(now);
            while (!deaths.isEmpty() && now - deaths.peekFirst() > RESTART_WINDOW.toMillis()) {
                deaths.removeFirst();
            }
            gaveUp = deaths.size() > MAX_RESTARTS;
            willRestart = !gaveUp;
            if (process != null) {
                process.destroyForcibly();
            }
        }
        progress.abandonAll(reason);
        listener.onDied(gen, reason, willRestart);
    }

    /** {@code shutdown} + {@code exit}, then the process ends (killed if it does not). */
    public void stop() {
        Process p;
        JsonRpcClient c;
        synchronized (this) {
            p = process;
            c = client;
            stopping = true;
            process = null;
            client = null;
        }
        if (c == null || p == null) {
            return;
        }
        try {
            if (!c.isClosed()) {
                c.request("shutdown", null, SHUTDOWN_TIMEOUT);
                c.notify("exit", null);
            }
        } catch (MirrordException | IOException e) {
            // It is going away either way.
        }
        try {
            if (!p.waitFor(SHUTDOWN_TIMEOUT.toMillis(), java.util.concurrent.TimeUnit.MILLISECONDS)) {
                p.destroyForcibly();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            p.destroyForcibly();
        }
        c.close("mirrord-server was stopped");
    }

    @Override
    public void close() {
        stop();
    }

    private final class Handler implements JsonRpcClient.Handler {
        private final long gen;

        Handler(long gen) {
            this.gen = gen;
        }

        @Override
        public void onNotification(String method, JsonElement params) {
            if (method.equals("$/progress")) {
                progress.progress(params);
            } else {
                listener.onNotification(method, params);
            }
        }

        @Override
        public JsonElement onRequest(String method, JsonElement params) throws RpcException {
            switch (method) {
                case "window/workDoneProgress/create" -> {
                    progress.create(params);
                    return JsonNull.INSTANCE;
                }
                case "client/registerCapability", "client/unregisterCapability", "window/showMessageRequest" -> {
                    return JsonNull.INSTANCE;
                }
                case "workspace/configuration" -> {
                    // No settings of ours live there: one null per item asked for.
                    JsonArray out = new JsonArray();
                    JsonObject p = params instanceof JsonObject o ? o : new JsonObject();
                    if (p.get("items") instanceof JsonArray items) {
                        for (int i = 0; i < items.size(); i++) {
                            out.add(JsonNull.INSTANCE);
                        }
                    }
                    return out;
                }
                default -> throw new RpcException(JsonRpcClient.METHOD_NOT_FOUND, "the IDE does not handle " + method, null);
            }
        }

        @Override
        public void onProtocolError(String problem) {
            listener.onProtocolError(problem);
        }

        @Override
        public void onClosed(String reason) {
            closed(gen, reason);
        }
    }
}
