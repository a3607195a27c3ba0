package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class SessionsModelTest {
    private static Api.SessionInfo info(String id, String state) {
        return new Api.SessionInfo(id, "pid/1", state, List.of(80), List.of(new Api.ProcessInfo(42, "/usr/bin/java")), 1000, 7L);
    }

    private static Api.StartSessionResult started(String id) {
        return new Api.StartSessionResult(id, Map.of(), List.of());
    }

    @Test
    void theDaemonsListUpdatesLiveEntriesAndEndsMissingOnes() {
        SessionsModel m = new SessionsModel();
        m.started(started("a"), "pid/1", 1);
        m.started(started("b"), "pid/1", 1);
        m.update(new Api.ListSessionsResult(List.of(info("a", "ready"))), 1);
        SessionsModel.Entry a = m.get("a");
        assertEquals(List.of(80), a.ports());
        assertEquals(7L, a.agentPid());
        assertEquals(42, a.processes().get(0).pid());
        assertEquals(SessionsModel.STOPPED, m.get("b").state());
        assertEquals(List.of("a"), m.live().stream().map(SessionsModel.Entry::sessionId).toList());
    }

    @Test
    void anErrorStaysTheStateWhenTheSessionThenStops() {
        SessionsModel m = new SessionsModel();
        m.started(started("a"), "pid/1", 1);
        m.changed(new Api.SessionChanged("a", "error", "the agent exited (signal 9)"));
        m.changed(new Api.SessionChanged("a", "stopped", null));
        assertEquals(SessionsModel.ERROR, m.get("a").state());
        assertEquals("the agent exited (signal 9)", m.get("a").message());
        m.changed(new Api.SessionChanged("unknown", "ready", null));
        assertNull(m.get("unknown"));
    }

    @Test
    void aDeadDaemonLosesItsOwnLiveSessionsOnly() {
        SessionsModel m = new SessionsModel();
        m.started(started("old"), "pid/1", 1);
        m.started(started("done"), "pid/1", 1);
        m.changed(new Api.SessionChanged("done", "stopped", null));
        m.started(started("new"), "pid/2", 2);
        List<SessionsModel.Entry> lost = m.daemonDied(1, "mirrord-server exited with code 137");
        assertEquals(List.of("old"), lost.stream().map(SessionsModel.Entry::sessionId).toList());
        assertEquals(SessionsModel.LOST, m.get("old").state());
        assertEquals("mirrord-server exited with code 137", m.get("old").message());
        assertEquals(SessionsModel.STOPPED, m.get("done").state());
        assertEquals(SessionsModel.READY, m.get("new").state());
        m.replaced("old", "new");
        assertEquals("new", m.get("old").replacedBy());
        m.clearEnded();
        assertEquals(List.of("new"), m.all().stream().map(SessionsModel.Entry::sessionId).toList());
    }

    @Test
    void endedSessionsAreBounded() {
        SessionsModel m = new SessionsModel();
        for (int i = 0; i < SessionsModel.MAX_ENDED + 5; i++) {
            m.started(started("s" + i), "pid/1", 1);
            m.changed(new Api.SessionChanged("s" + i, "stopped", null));
        }
        assertEquals(SessionsModel.MAX_ENDED, m.all().size());
        assertTrue(m.get("s0") == null && m.get("s" + (SessionsModel.MAX_ENDED + 4)) != null);
    }
}
