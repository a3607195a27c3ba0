package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import io.mirrord.jetbrains.core.testing.FakeDaemon;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/** The daemon's life cycle against {@link FakeDaemon}, a real child process. */
class DaemonTest {
    private static final Duration WAIT = Duration.ofSeconds(20);

    private final BlockingQueue<String> events = new LinkedBlockingQueue<>();
    private final Daemon.Listener listener = new Daemon.Listener() {
        @Override
        public void onNotification(String method, JsonElement params) {
            events.add("notification " + method);
        }

        @Override
        public void onStarted(long generation, long pid) {
            events.add("started " + generation);
        }

        @Override
        public void onDied(long generation, String reason, boolean willRestart) {
            events.add("died " + generation + " " + willRestart + " " + reason);
        }

        @Override
        public void onProtocolError(String problem) {
            events.add("protocol " + problem);
        }
    };
    private final ProgressTracker progress = new ProgressTracker(new ProgressTracker.Listener() {
        @Override
        public void begin(String token, String title) {
            events.add("begin " + title);
        }

        @Override
        public void report(String token, String message) {
            events.add("report " + message);
        }

        @Override
        public void end(String token, String message) {
            events.add("end " + message);
        }
    });

    private String next(String prefix) throws InterruptedException {
        long deadline = System.nanoTime() + WAIT.toNanos();
        while (true) {
            String e = events.poll(Math.max(1, (deadline - System.nanoTime()) / 1_000_000), TimeUnit.MILLISECONDS);
            if (e == null) {
                throw new AssertionError("no event starting with \"" + prefix + "\" within " + WAIT);
            }
            if (e.startsWith(prefix)) {
                return e;
            }
        }
    }

    private static JsonObject target(String t) {
        JsonObject p = new JsonObject();
        p.addProperty("target", t);
        return p;
    }

    @Test
    void startsOnFirstUseWithTheLspLifecycleAndFollowsProgress() throws Exception {
        try (Daemon d = new Daemon(FakeDaemon.command(), listener, progress)) {
            assertEquals(-1, d.pid(), "not started before it is needed");
            JsonElement r = d.request(Api.START_SESSION, target("pid/1"), WAIT);
            assertTrue(r.getAsJsonObject().get("sessionId").getAsString().startsWith("s-" + d.pid()), r.toString());
            assertEquals("started 1", next("started"));
            assertEquals("begin mirrord: starting the agent for pid/1", next("begin"));
            assertEquals("end agent ready", next("end"));
        }
    }

    @Test
    void aDaemonThatDiesMidRequestIsReportedAndRestartedOnNextUse() throws Exception {
        try (Daemon d = new Daemon(FakeDaemon.command(), listener, progress)) {
            d.ensureRunning();
            long first = d.pid();
            MirrordException e = assertThrows(MirrordException.class, () -> d.request(Api.START_SESSION, target("pid/die"), WAIT));
            assertInstanceOf(DaemonDiedException.class, e);
            assertTrue(e.getMessage().contains("mirrord-server"), e.getMessage());
            String died = next("died");
            assertTrue(died.startsWith("died 1 true"), died);
            assertTrue(!d.isRunning());
            JsonElement r = d.request(Api.START_SESSION, target("pid/1"), WAIT);
            assertNotEquals(first, d.pid());
            assertEquals(2, d.generation());
            assertTrue(r.getAsJsonObject().get("sessionId").getAsString().startsWith("s-" + d.pid()), r.toString());
        }
    }

    @Test
    void afterTooManyDeathsItIsNotRestartedUntilAskedTo() throws Exception {
        try (Daemon d = new Daemon(FakeDaemon.command(), listener, progress)) {
            for (int i = 1; i <= Daemon.MAX_RESTARTS + 1; i++) {
                assertThrows(DaemonDiedException.class, () -> d.request(Api.START_SESSION, target("pid/die"), WAIT));
                String died = next("died " + i);
                assertEquals(i <= Daemon.MAX_RESTARTS, died.startsWith("died " + i + " true"), died);
            }
            MirrordException e = assertThrows(MirrordException.class, d::ensureRunning);
            assertTrue(e.getMessage().contains("not restarted"), e.getMessage());
            d.restart();
            assertTrue(d.isRunning());
        }
    }

    @Test
    void stopSendsShutdownAndExitAndIsNotADeath() throws Exception {
        Daemon d = new Daemon(FakeDaemon.command(), listener, progress);
        d.ensureRunning();
        ProcessHandle p = ProcessHandle.of(d.pid()).orElseThrow();
        d.stop();
        assertTrue(p.onExit().get(10, TimeUnit.SECONDS) != null);
        assertTrue(!p.isAlive());
        assertTrue(events.stream().noneMatch(e -> e.startsWith("died")), events.toString());
    }

    @Test
    void aProgramThatIsNotMirrordServerIsRefused() {
        try (Daemon d = new Daemon(FakeDaemon.command("--impostor"), listener, progress)) {
            MirrordException e = assertThrows(MirrordException.class, d::ensureRunning);
            assertTrue(e.getMessage().contains("is not mirrord-server"), e.getMessage());
            assertTrue(!d.isRunning());
        }
    }

    @Test
    void aMissingBinaryIsAClearError() {
        Daemon.Command missing = new Daemon.Command(List.of("/nonexistent/mirrord-server", "--stdio"), java.util.Map.of());
        try (Daemon d = new Daemon(missing, listener, progress)) {
            MirrordException e = assertThrows(MirrordException.class, d::ensureRunning);
            assertTrue(e.getMessage().contains("/nonexistent/mirrord-server"), e.getMessage());
        }
    }
}
