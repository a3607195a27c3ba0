package io.mirrord.jetbrains.core;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CopyOnWriteArrayList;

/**
 * The sessions the tool window lists: the daemon's live sessions ({@code mirrord/listSessions},
 * {@code mirrord/sessionChanged}) and the ones that ended, with why, until cleared. A session of
 * a daemon that died is {@link #LOST}; when a launch starts its replacement, the entry says so.
 */
public final class SessionsModel {
    public static final String STARTING = "starting";
    public static final String READY = "ready";
    /** The connection to the agent dropped; the daemon reconnects ("ready" follows, or "error"). */
    public static final String RECONNECTING = "reconnecting";
    public static final String ERROR = "error";
    public static final String STOPPED = "stopped";
    /** The daemon that owned the session died; so did the session. */
    public static final String LOST = "lost";
    /** Ended sessions kept for display. */
    public static final int MAX_ENDED = 20;

    /**
     * One session as the tool window shows it.
     *
     * @param generation the daemon start that owns it
     * @param replacedBy the session that took over its launches after it was lost, or null
     */
    public record Entry(
            String sessionId,
            String target,
            String state,
            String message,
            List<Integer> ports,
            List<Api.ProcessInfo> processes,
            long startedAt,
            Long agentPid,
            long generation,
            String replacedBy) {
        public boolean live() {
            return state.equals(READY) || state.equals(STARTING);
        }

        Entry with(String newState, String newMessage) {
            return new Entry(sessionId, target, newState, newMessage, ports, processes, startedAt, agentPid, generation, replacedBy);
        }

        Entry replacedBy(String id) {
            return new Entry(sessionId, target, state, message, ports, processes, startedAt, agentPid, generation, id);
        }
    }

    public interface Listener {
        void changed();
    }

    private final List<Listener> listeners = new CopyOnWriteArrayList<>();
    /** sessionId → entry, in the order they started. Guarded by `this`. */
    private final Map<String, Entry> entries = new LinkedHashMap<>();

    public void addListener(Listener l) {
        listeners.add(l);
    }

    public void removeListener(Listener l) {
        listeners.remove(l);
    }

    public synchronized List<Entry> all() {
        return List.copyOf(entries.values());
    }

    public synchronized List<Entry> live() {
        return entries.values().stream().filter(Entry::live).toList();
    }

    public synchronized Entry get(String sessionId) {
        return entries.get(sessionId);
    }

    /** A session this client just started (or joined) in daemon {@code generation}. */
    public void started(Api.StartSessionResult result, String target, long generation) {
        synchronized (this) {
            Entry old = entries.get(result.sessionId());
            if (old == null) {
                entries.put(result.sessionId(), new Entry(result.sessionId(), target, READY, null, List.of(), List.of(),
                        System.currentTimeMillis(), null, generation, null));
            }
        }
        fire();
    }

    /** {@code lost} session's launches now go to {@code replacement}. */
    public void replaced(String lost, String replacement) {
        synchronized (this) {
            Entry e = entries.get(lost);
            if (e != null) {
                entries.put(lost, e.replacedBy(replacement));
            }
        }
        fire();
    }

    /** The daemon's list: live entries are updated; live ones it no longer has have stopped. */
    public void update(Api.ListSessionsResult result, long generation) {
        synchronized (this) {
            Set<String> listed = new HashSet<>();
            for (Api.SessionInfo s : result.sessions() == null ? List.<Api.SessionInfo>of() : result.sessions()) {
                listed.add(s.sessionId());
                Entry old = entries.get(s.sessionId());
                entries.put(s.sessionId(), new Entry(s.sessionId(), s.target(), s.state(),
                        old == null ? null : old.message(),
                        s.ports() == null ? List.of() : List.copyOf(s.ports()),
                        s.processes() == null ? List.of() : List.copyOf(s.processes()),
                        s.startedAt(), s.agentPid(), generation, old == null ? null : old.replacedBy()));
            }
            for (Map.Entry<String, Entry> e : entries.entrySet()) {
                Entry v = e.getValue();
                if (v.live() && v.generation() == generation && !listed.contains(e.getKey())) {
                    e.setValue(v.with(STOPPED, v.message()));
                }
            }
            trimEnded();
        }
        fire();
    }

    /** {@code mirrord/sessionChanged}. */
    public void changed(Api.SessionChanged n) {
        synchronized (this) {
            Entry e = entries.get(n.sessionId());
            if (e == null) {
                return;
            }
            // "stopped" after "error" keeps the error's message: it says why.
            String message = n.message() != null ? n.message() : (n.state().equals(STOPPED) ? e.message() : null);
            String state = e.state().equals(ERROR) && n.state().equals(STOPPED) ? ERROR : n.state();
            entries.put(n.sessionId(), e.with(state, message));
            trimEnded();
        }
        fire();
    }

    /**
     * The daemon of {@code generation} died: its live sessions are lost.
     *
     * @return the lost entries
     */
    public List<Entry> daemonDied(long generation, String reason) {
        List<Entry> lost = new ArrayList<>();
        synchronized (this) {
            for (Map.Entry<String, Entry> e : entries.entrySet()) {
                Entry v = e.getValue();
                if (v.live() && v.generation() == generation) {
                    Entry l = v.with(LOST, reason);
                    e.setValue(l);
                    lost.add(l);
                }
            }
            trimEnded();
        }
        fire();
        return lost;
    }

    /** Forgets ended sessions. */
    public void clearEnded() {
        synchronized (this) {
            entries.values().removeIf(e -> !e.live());
        }
        fire();
    }

    private void trimEnded() {
        List<String> ended = entries.values().stream().filter(e -> !e.live()).map(Entry::sessionId).toList();
        for (int i = 0; i < ended.size() - MAX_ENDED; i++) {
            entries.remove(ended.get(i));
        }
    }

    private void fire() {
        for (Listener l : listeners) {
            l.changed();
        }
    }
}
