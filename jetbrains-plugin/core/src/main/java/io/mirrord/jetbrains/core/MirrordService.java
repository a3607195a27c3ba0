package io.mirrord.jetbrains.core;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;

/**
 * Everything the plugin decides, for one project: the daemon, the toggle, the launch flow (when
 * mirrord applies, which target, the session, the environment), the traffic table, the sessions
 * list, and what the user is told. The platform part forwards IDE events here and shows what
 * this class hands back.
 *
 * <p><b>Re-attach after the daemon dies.</b> A session cannot outlive its daemon (its agent
 * exits when the daemon's lifeline closes), so re-attaching means: the dead daemon's sessions
 * are shown as {@link SessionsModel#LOST} with the reason, the daemon is started again at once
 * (within the restart budget of {@link Daemon}), and the next launch of a run configuration
 * whose session was lost starts a new session on the same target — the configuration file's
 * target, or the one picked for this run configuration, which is remembered so the picker does
 * not ask again — and the lost entry names its replacement. Rows of the lost session stay in
 * the traffic table.
 */
public final class MirrordService implements AutoCloseable {
    public static final Duration START_SESSION_TIMEOUT = Duration.ofSeconds(120);
    public static final Duration REQUEST_TIMEOUT = Duration.ofSeconds(30);
    /** History rows fetched when a session is started or joined. */
    public static final int HISTORY_LIMIT = 500;

    /** What the platform part shows or asks; every method may be called from any thread. */
    public interface Ui extends ProgressTracker.Listener {
        /** A balloon: {@code level} says how loud. */
        void notify(Level level, String message);

        /**
         * Asks the user for a target among {@code items} (already ordered) and waits for the
         * answer; {@code null} when the user cancelled.
         */
        String chooseTarget(List<Targets.Item> items);
    }

    public enum Level { INFO, WARNING, ERROR }

    /** Per-project state the platform persists. */
    public interface State {
        boolean enabled();

        void setEnabled(boolean on);

        List<String> recentTargets();

        void setRecentTargets(List<String> recent);
    }

    /**
     * What a launch becomes.
     *
     * @param session {@code null} when mirrord does not run for it (see {@code decision}) or the
     *     user cancelled the target picker
     * @param environment the variables to set and unset, {@code null} like {@code session}
     */
    public record Prepared(LaunchRules.Decision decision, Api.StartSessionResult session,
                           LaunchRules.LaunchEnvironment environment, boolean cancelled) {
        public boolean active() {
            return session != null;
        }
    }

    private final Daemon daemon;
    private final Ui ui;
    private final State state;
    private final TrafficModel traffic;
    private final SessionsModel sessions = new SessionsModel();
    /** Background work (restarts, history, refreshes): never on the daemon's reader thread. */
    private final ExecutorService background = Executors.newSingleThreadExecutor(r -> {
        Thread t = new Thread(r, "mirrord background");
        t.setDaemon(true);
        return t;
    });
    /** run configuration name → the target its last session used (for re-attach). */
    private final Map<String, String> targetByLaunch = new ConcurrentHashMap<>();
    /** run configuration name → its last session id. */
    private final Map<String, String> sessionByLaunch = new ConcurrentHashMap<>();

    public MirrordService(Daemon.Command command, Ui ui, State state) {
        this(command, ui, state, new TrafficModel());
    }

    public MirrordService(Daemon.Command command, Ui ui, State state, TrafficModel traffic) {
        this.ui = ui;
        this.state = state;
        this.traffic = traffic;
        this.daemon = new Daemon(command, new DaemonEvents(), new ProgressTracker(ui));
    }

    public TrafficModel traffic() {
        return traffic;
    }

    public SessionsModel sessions() {
        return sessions;
    }

    public Daemon daemon() {
        return daemon;
    }

    public boolean enabled() {
        return state.enabled();
    }

    /** Flips the toggle; returns the new value. */
    public boolean toggle() {
        boolean on = !state.enabled();
        state.setEnabled(on);
        return on;
    }

    /** The status bar's text and tooltip for the toggle. */
    public String statusText() {
        return state.enabled() ? "mirrord: on" : "mirrord: off";
    }

    public String statusTooltip() {
        return state.enabled()
                ? "mirrord is on for this project: launches get the target's network. Click to turn it off."
                : "mirrord is off for this project. Click to turn it on.";
    }

    /**
     * The launch flow: decide, start (or join) the session, ask for a target when there is
     * none, and merge the environment. Blocking (the agent may take seconds to start): call
     * it off the UI thread.
     *
     * @throws MirrordException when the session cannot be started (the message says why; the
     *     platform aborts the launch and shows it)
     */
    public Prepared prepareLaunch(String workspaceFolder, LaunchRules.Launch launch) throws MirrordException {
        LaunchRules.Decision decision = LaunchRules.decide(launch, state.enabled());
        if (!decision.active()) {
            return new Prepared(decision, null, null, false);
        }
        String key = launch.name() == null ? "" : launch.name();
        // The configuration file's target (if any) comes first, so that editing it takes effect;
        // a target chosen in the picker is only for configurations that name none.
        Api.StartSessionParams params = LaunchRules.startSessionParams(workspaceFolder, launch, null);
        Api.StartSessionResult result;
        try {
            result = startSession(params);
        } catch (RpcException e) {
            if (e.kind() != ErrorKind.NO_TARGET) {
                throw e;
            }
            String remembered = targetByLaunch.get(key);
            String target = remembered != null ? remembered : pickTarget(workspaceFolder);
            if (target == null) {
                return new Prepared(decision, null, null, true);
            }
            params = params.withTarget(target);
            try {
                result = startSession(params);
            } catch (MirrordException failed) {
                if (remembered == null || !(failed instanceof RpcException)) {
                    throw failed;
                }
                // The remembered target may be gone (a restarted pod): ask again next time.
                targetByLaunch.remove(key);
                throw new MirrordException(failed.getMessage() + " (the next launch asks for the target again)", failed);
            }
            targetByLaunch.put(key, target);
        }
        String target = params.target();
        String previous = sessionByLaunch.put(key, result.sessionId());
        sessions.started(result, target == null ? "" : target, daemon.generation());
        if (previous != null && !previous.equals(result.sessionId())) {
            SessionsModel.Entry old = sessions.get(previous);
            if (old != null && old.state().equals(SessionsModel.LOST)) {
                sessions.replaced(previous, result.sessionId());
            }
        }
        String sessionId = result.sessionId();
        background.submit(() -> {
            loadHistory(sessionId);
            refreshSessions();
        });
        return new Prepared(decision, result, LaunchRules.applySession(launch.env(), result), false);
    }

    private Api.StartSessionResult startSession(Api.StartSessionParams params) throws MirrordException {
        JsonElement r = daemon.request(Api.START_SESSION, params, START_SESSION_TIMEOUT);
        Api.StartSessionResult result = Json.fromTree(r, Api.StartSessionResult.class);
        if (result == null || result.sessionId() == null || result.env() == null) {
            throw new MirrordException("mirrord-server answered startSession without a session: " + r);
        }
        return result;
    }

    /** The picker's items for this project, recent targets first. */
    public List<Targets.Item> targets(String workspaceFolder) throws MirrordException {
        JsonElement r = daemon.request(Api.LIST_TARGETS, new Api.ListTargetsParams(workspaceFolder, null, null), REQUEST_TIMEOUT);
        Api.ListTargetsResult list = Json.fromTree(r, Api.ListTargetsResult.class);
        List<Api.TargetInfo> found = list == null || list.targets() == null ? List.of() : list.targets();
        return Targets.order(found, state.recentTargets());
    }

    /**
     * Asks the user for a target and remembers it as the most recent; {@code null} when there
     * is none to choose from (the user is told) or the user cancelled.
     */
    public String pickTarget(String workspaceFolder) throws MirrordException {
        List<Targets.Item> items = targets(workspaceFolder);
        if (items.isEmpty()) {
            ui.notify(Level.ERROR, "mirrord: no target found; set \"target\" in .mirrord/mirrord.json.");
            return null;
        }
        String chosen = ui.chooseTarget(items);
        if (chosen != null) {
            state.setRecentTargets(Targets.remember(state.recentTargets(), chosen));
        }
        return chosen;
    }

    public void stopSession(String sessionId) throws MirrordException {
        daemon.request(Api.STOP_SESSION, new Api.SessionIdParams(sessionId), REQUEST_TIMEOUT);
        refreshSessions();
    }

    /** Asks the daemon for its sessions (if it runs) and updates the model. */
    public void refreshSessions() {
        if (!daemon.isRunning()) {
            return;
        }
        try {
            long gen = daemon.generation();
            JsonElement r = daemon.request(Api.LIST_SESSIONS, new JsonObject(), REQUEST_TIMEOUT);
            sessions.update(Json.fromTree(r, Api.ListSessionsResult.class), gen);
        } catch (MirrordException e) {
            // The daemon died meanwhile: its death is reported on its own.
        }
    }

    private void loadHistory(String sessionId) {
        try {
            JsonElement r = daemon.request(Api.TRAFFIC_HISTORY, new Api.TrafficHistoryParams(sessionId, HISTORY_LIMIT), REQUEST_TIMEOUT);
            List<JsonObject> events = new ArrayList<>();
            if (r instanceof JsonObject o && o.get("events") != null && o.get("events").isJsonArray()) {
                for (JsonElement e : o.getAsJsonArray("events")) {
                    if (e instanceof JsonObject ev) {
                        events.add(ev);
                    }
                }
            }
            traffic.addHistory(sessionId, events);
        } catch (MirrordException e) {
            // Live rows still arrive; the history only fills gaps.
        }
    }

    /** Restarts the daemon on the user's request (its sessions end). */
    public void restartDaemon() throws MirrordException {
        daemon.restart();
        refreshSessions();
    }

    /** Starts the daemon now (e.g. when the project opens), reporting a failure to the user. */
    public void startInBackground() {
        background.submit(() -> {
            try {
                daemon.ensureRunning();
            } catch (MirrordException e) {
                ui.notify(Level.ERROR, "mirrord: " + e.getMessage());
            }
        });
    }

    @Override
    public void close() {
        background.shutdownNow();
        daemon.close();
        try {
            background.awaitTermination(1, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** What the user is told when a session changes state; {@code null} for nothing. */
    static String sessionMessage(Api.SessionChanged n) {
        if (SessionsModel.ERROR.equals(n.state())) {
            return n.message() != null ? n.message() : "session " + n.sessionId() + " failed";
        }
        return n.message() != null && n.message().contains("keeps the configuration it started with") ? n.message() : null;
    }

    private final class DaemonEvents implements Daemon.Listener {
        @Override
        public void onNotification(String method, JsonElement params) {
            switch (method) {
                case Api.TRAFFIC -> {
                    TrafficModel.Row row = traffic.addNotification(params);
                    if (row != null && (row.kind() == TrafficModel.Kind.PROCESS || row.kind() == TrafficModel.Kind.PORT
                            || row.kind() == TrafficModel.Kind.ERROR)) {
                        background.submit(MirrordService.this::refreshSessions);
                    }
                }
                case Api.SESSION_CHANGED -> {
                    Api.SessionChanged n = Json.fromTree(params, Api.SessionChanged.class);
                    if (n == null || n.sessionId() == null || n.state() == null) {
                        return;
                    }
                    sessions.changed(n);
                    String message = sessionMessage(n);
                    if (message != null) {
                        ui.notify(SessionsModel.ERROR.equals(n.state()) ? Level.ERROR : Level.WARNING, "mirrord: " + message);
                    }
                    background.submit(MirrordService.this::refreshSessions);
                }
                case "window/showMessage" -> {
                    JsonObject p = params instanceof JsonObject o ? o : new JsonObject();
                    long type = Json.num(p, "type", 3);
                    ui.notify(type == 1 ? Level.ERROR : type == 2 ? Level.WARNING : Level.INFO, "mirrord: " + Json.str(p, "message", ""));
                }
                default -> {
                    // publishDiagnostics and the like: the IDE's own JSON Schema support covers the
                    // configuration files.
                }
            }
        }

        @Override
        public void onStarted(long generation, long pid) {
            background.submit(MirrordService.this::refreshSessions);
        }

        @Override
        public void onDied(long generation, String reason, boolean willRestart) {
            List<SessionsModel.Entry> lost = sessions.daemonDied(generation, reason);
            StringBuilder msg = new StringBuilder("mirrord: mirrord-server stopped unexpectedly (").append(reason).append(").");
            if (!lost.isEmpty()) {
                msg.append(" Its sessions ended; the next launch starts a new session on ")
                        .append(String.join(", ", lost.stream().map(SessionsModel.Entry::target).distinct().toList()))
                        .append('.');
            }
            if (willRestart) {
                ui.notify(Level.WARNING, msg.append(" It was restarted.").toString());
                background.submit(() -> {
                    try {
                        daemon.ensureRunning();
                    } catch (MirrordException e) {
                        ui.notify(Level.ERROR, "mirrord: " + e.getMessage());
                    }
                });
            } else {
                ui.notify(Level.ERROR, msg.append(" It stopped too often and is not restarted; restart it from the mirrord tool window.").toString());
            }
        }

        @Override
        public void onProtocolError(String problem) {
            ui.notify(Level.WARNING, "mirrord: " + problem);
        }
    }
}
