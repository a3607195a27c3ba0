package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.mirrord.jetbrains.core.testing.FakeDaemon;
import io.mirrord.jetbrains.core.testing.MemoryState;
import io.mirrord.jetbrains.core.testing.RecordingUi;
import io.mirrord.jetbrains.core.testing.Waits;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The launch flow and re-attach against {@link FakeDaemon}. */
class MirrordServiceTest {
    private static final Duration WAIT = Duration.ofSeconds(20);

    private static LaunchRules.Launch launch(String name, Map<String, String> env) {
        return new LaunchRules.Launch(name, false, "/usr/bin/app", List.of("--port", "80"), null, "java", env);
    }

    @Test
    void anInactiveLaunchDoesNotStartTheDaemon() throws Exception {
        RecordingUi ui = new RecordingUi(items -> "pid/1");
        try (MirrordService s = new MirrordService(FakeDaemon.command(), ui, new MemoryState(false))) {
            MirrordService.Prepared p = s.prepareLaunch("/ws", launch("app", Map.of()));
            assertFalse(p.active());
            assertEquals(LaunchRules.Reason.DISABLED, p.decision().reason());
            assertEquals(-1, s.daemon().pid());
            MirrordService.Prepared attach = s.prepareLaunch("/ws",
                    new LaunchRules.Launch("remote", true, null, null, null, "java", Map.of("MIRRORD_ACTIVE", "1")));
            assertEquals(LaunchRules.Reason.ATTACH, attach.decision().reason());
            assertEquals(-1, s.daemon().pid());
        }
    }

    @Test
    void noTargetAsksThePickerThenRemembersAndMergesTheEnvironment() throws Exception {
        RecordingUi ui = new RecordingUi(items -> items.get(0).target());
        MemoryState state = new MemoryState(false);
        try (MirrordService s = new MirrordService(FakeDaemon.command(), ui, state)) {
            MirrordService.Prepared p = s.prepareLaunch("/ws",
                    launch("app", Map.of("MIRRORD_ACTIVE", "1", "LD_PRELOAD", "/usr/lib/libjemalloc.so", "A", "1")));
            assertEquals(LaunchRules.Reason.FORCED_ON, p.decision().reason());
            assertEquals(1, ui.pickerCalls().size());
            assertEquals(List.of("pid/1", "pid/2"), ui.pickerCalls().get(0).stream().map(Targets.Item::target).toList());
            assertEquals(List.of("pid/1"), state.recentTargets());
            assertEquals("/usr/lib/libjemalloc.so:/opt/mirrord/libmirrord_layer.so", p.environment().env().get("LD_PRELOAD"));
            assertEquals("1", p.environment().env().get("A"));
            assertNull(p.environment().env().get("MIRRORD_ACTIVE"));
            assertTrue(p.environment().unset().contains("MIRRORD_ACTIVE"));
            ui.waitProgress(x -> x.startsWith("end "), WAIT);

            // The same configuration again: no picker.
            s.prepareLaunch("/ws", launch("app", Map.of("MIRRORD_ACTIVE", "1")));
            assertEquals(1, ui.pickerCalls().size());
        }
    }

    @Test
    void aRememberedTargetThatFailsIsForgottenAndAskedForAgain() throws Exception {
        java.util.concurrent.atomic.AtomicInteger asked = new java.util.concurrent.atomic.AtomicInteger();
        RecordingUi ui = new RecordingUi(items -> asked.getAndIncrement() == 0 ? "pid/once" : "pid/1");
        MemoryState state = new MemoryState(true);
        try (MirrordService s = new MirrordService(FakeDaemon.command(), ui, state)) {
            assertTrue(s.prepareLaunch("/ws", launch("app", Map.of())).active());
            MirrordException e = org.junit.jupiter.api.Assertions.assertThrows(MirrordException.class,
                    () -> s.prepareLaunch("/ws", launch("app", Map.of())));
            assertTrue(e.getMessage().contains("could not start a session on pid/once")
                    && e.getMessage().contains("the next launch asks for the target again"), e.getMessage());
            assertEquals(1, ui.pickerCalls().size(), "the remembered target was tried without asking");
            assertTrue(s.prepareLaunch("/ws", launch("app", Map.of())).active());
            assertEquals(2, ui.pickerCalls().size());
            assertEquals(List.of("pid/1", "pid/once"), state.recentTargets());
        }
    }

    @Test
    void aCancelledPickerCancelsTheLaunch() throws Exception {
        RecordingUi ui = new RecordingUi(items -> null);
        try (MirrordService s = new MirrordService(FakeDaemon.command(), ui, new MemoryState(true))) {
            MirrordService.Prepared p = s.prepareLaunch("/ws", launch("app", Map.of()));
            assertTrue(p.cancelled());
            assertFalse(p.active());
        }
    }

    @Test
    void afterTheDaemonDiesTheNextLaunchStartsANewSessionOnTheSameTarget() throws Exception {
        RecordingUi ui = new RecordingUi(items -> "pid/1");
        try (MirrordService s = new MirrordService(FakeDaemon.command(), ui, new MemoryState(true))) {
            String first = s.prepareLaunch("/ws", launch("app", Map.of())).session().sessionId();
            Waits.session(s.sessions(), first, e -> e.agentPid() != null, WAIT);
            long oldPid = s.daemon().pid();
            ProcessHandle.of(oldPid).orElseThrow().destroyForcibly();
            RecordingUi.Note note = ui.waitNote(n -> n.message().contains("stopped unexpectedly"), WAIT);
            assertEquals(MirrordService.Level.WARNING, note.level());
            assertTrue(note.message().contains("next launch starts a new session on pid/1"), note.message());
            SessionsModel.Entry lost = Waits.session(s.sessions(), first, e -> e.state().equals(SessionsModel.LOST), WAIT);
            assertTrue(lost.message().contains("exited") || lost.message().contains("closed"), lost.message());

            String second = s.prepareLaunch("/ws", launch("app", Map.of())).session().sessionId();
            assertEquals(1, ui.pickerCalls().size(), "the target is not asked again");
            assertNotEquals(first, second);
            assertNotEquals(oldPid, s.daemon().pid());
            assertEquals(second, s.sessions().get(first).replacedBy());
            assertEquals(List.of(second), s.sessions().live().stream().map(SessionsModel.Entry::sessionId).toList());
        }
    }

    @Test
    void theToggleFlipsAndDescribesItself() {
        MemoryState state = new MemoryState(false);
        try (MirrordService s = new MirrordService(FakeDaemon.command(), new RecordingUi(i -> null), state)) {
            assertEquals("mirrord: off", s.statusText());
            assertTrue(s.toggle());
            assertTrue(state.enabled());
            assertEquals("mirrord: on", s.statusText());
            assertTrue(s.statusTooltip().contains("Click to turn it off"));
        }
    }

    @Test
    void sessionErrorsAreShownAndInformationalChangesAreNot() {
        assertEquals("the agent exited", MirrordService.sessionMessage(new Api.SessionChanged("s", "error", "the agent exited")));
        assertEquals("session s failed", MirrordService.sessionMessage(new Api.SessionChanged("s", "error", null)));
        assertNull(MirrordService.sessionMessage(new Api.SessionChanged("s", "ready", "agent pid 4 on pid/1")));
        String bad = "x.json:1:2: bad; this session keeps the configuration it started with";
        assertEquals(bad, MirrordService.sessionMessage(new Api.SessionChanged("s", "ready", bad)));
    }
}
