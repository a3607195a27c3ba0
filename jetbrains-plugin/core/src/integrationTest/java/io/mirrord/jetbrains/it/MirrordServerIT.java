package io.mirrord.jetbrains.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.mirrord.jetbrains.core.LaunchRules;
import io.mirrord.jetbrains.core.MirrordService;
import io.mirrord.jetbrains.core.ServerLocator;
import io.mirrord.jetbrains.core.SessionsModel;
import io.mirrord.jetbrains.core.Targets;
import io.mirrord.jetbrains.core.TrafficModel;
import io.mirrord.jetbrains.core.testing.MemoryState;
import io.mirrord.jetbrains.core.testing.RecordingUi;
import io.mirrord.jetbrains.core.testing.Waits;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * The core against the real {@code mirrord-server --stdio} on the simulated cluster, driven by
 * {@code tests/tests/jetbrains.rs}, which runs this class in the cluster's {@code dev}
 * namespace and passes the cluster through {@code MIRRORD_IT_*} variables.
 *
 * <p>Everything goes through {@link MirrordService} as the plugin's run configuration extension
 * calls it, and the launched programs are real JVMs started with the environment it returns.
 */
class MirrordServerIT {
    private static final Duration WAIT = Duration.ofSeconds(30);
    private static final String CONFIG = """
            {"feature": {"network": {
              "incoming": {"mode": "steal", "http_filter": {"header_filter": "x-user: alice"}},
              "outgoing": true,
              "dns": true
            }}}
            """;

    private static String env(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            throw new IllegalStateException(name + " is not set: run this through tests/tests/jetbrains.rs");
        }
        return v;
    }

    private final Path server = Path.of(env("MIRRORD_IT_SERVER"));
    private final String target = env("MIRRORD_IT_TARGET");
    private final Path workdir = Path.of(env("MIRRORD_IT_WORKDIR"));
    private final String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
    private final String programs = env("MIRRORD_IT_PROGRAMS_CP");
    private final ClientNamespace client =
            new ClientNamespace(env("MIRRORD_IT_IP"), env("MIRRORD_IT_CLIENT_NS"), env("MIRRORD_IT_POD_URL"));

    /**
     * A run configuration of a Java application: {@code java -cp CP MAIN ARGS}, no JVM flags
     * (the layer needs none: the JVM's lookups, NIO connects and its HTTP server's listen and
     * accept go through libc).
     */
    private LaunchRules.Launch javaApp(String name, Path ws, String main, String... args) {
        List<String> argv = new ArrayList<>(List.of("-cp", programs, main));
        argv.addAll(List.of(args));
        return new LaunchRules.Launch(name, false, java, argv, ws.toString(), "java", Map.of("APP_MODE", name));
    }

    /** Starts the launch's program with the environment the core prepared, as the IDE would. */
    private static Launched start(LaunchRules.Launch launch, MirrordService.Prepared prepared) throws Exception {
        assertTrue(prepared.active(), "mirrord runs for " + launch.name() + ": " + prepared.decision());
        Map<String, String> env = LaunchRules.processEnvironment(System.getenv(), prepared.environment());
        List<String> argv = new ArrayList<>();
        argv.add(launch.program());
        argv.addAll(launch.args());
        return new Launched(launch.name(), argv, env);
    }

    private MirrordService service(RecordingUi ui, String logName) throws Exception {
        Path log = workdir.resolve(logName);
        Map<String, String> env = Map.of("MIRRORD_RUNTIME_DIR", env("MIRRORD_RUNTIME_DIR"));
        return new MirrordService(ServerLocator.command(server, "debug", log, env), ui, new MemoryState(true));
    }

    private Path workspace(String name) throws Exception {
        Path ws = workdir.resolve(name);
        Files.createDirectories(ws.resolve(".mirrord"));
        Files.writeString(ws.resolve(".mirrord").resolve("mirrord.json"), CONFIG);
        return ws;
    }

    private String pickOurTarget(List<Targets.Item> items) {
        return items.stream().map(Targets.Item::target).filter(target::equals).findFirst().orElse(null);
    }

    @Test
    void launchesJavaProgramsInASessionAndShowsTheirTraffic() throws Exception {
        Path ws = workspace("ws");
        RecordingUi ui = new RecordingUi(this::pickOurTarget);
        try (MirrordService mirrord = service(ui, "daemon-1.log")) {
            TrafficModel traffic = mirrord.traffic();

            // 1. The outgoing program. The configuration has no target: the picker asks, from
            // the daemon's list, which has the pod.
            LaunchRules.Launch clientLaunch = javaApp("payment-client", ws, PaymentClient.class.getName(),
                    "http://payment-service:8080/");
            MirrordService.Prepared first = mirrord.prepareLaunch(ws.toString(), clientLaunch);
            assertEquals(LaunchRules.Reason.ENABLED, first.decision().reason());
            assertEquals(1, ui.pickerCalls().size(), "the picker asked once");
            assertTrue(ui.pickerCalls().get(0).stream().anyMatch(i -> i.target().equals(target) && i.available()),
                    "the target list has " + target + ": " + ui.pickerCalls().get(0));
            String sessionId = first.session().sessionId();
            Map<String, String> env = first.environment().env();
            assertEquals(sessionId, env.get("MIRRORD_SESSION"));
            assertTrue(env.get("LD_PRELOAD").endsWith("libmirrord_layer.so"), env.toString());
            assertEquals("payment-client", env.get("APP_MODE"), "the configuration's own env is kept");
            assertTrue(first.environment().unset().contains("MIRRORD_ACTIVE"), first.environment().toString());
            // The agent start is a long step: it showed in the progress bar and ended.
            ui.waitProgress(p -> p.startsWith("begin ") && p.contains(target), WAIT);
            ui.waitProgress(p -> p.startsWith("end "), WAIT);

            try (Launched paymentClient = start(clientLaunch, first)) {
                assertEquals(0, paymentClient.waitExit(WAIT), "payment client: " + paymentClient.stdout() + paymentClient.stderr());
                assertTrue(paymentClient.stdout().contains("BODY payment-service: hello"), paymentClient.stdout().toString());
            }
            TrafficModel.Row dns = Waits.row(traffic, r -> r.kind() == TrafficModel.Kind.DNS && r.summary().startsWith("payment-service "),
                    WAIT, "for the lookup of payment-service");
            assertTrue(dns.summary().contains("10.96.0.50"), dns.summary());
            TrafficModel.Row out = Waits.row(traffic, r -> r.kind() == TrafficModel.Kind.OUTGOING
                    && r.summary().startsWith("payment-service:8080"), WAIT, "for the connection to payment-service");
            assertEquals("ok", out.status());
            assertEquals(sessionId, out.sessionId());

            // 2. The incoming program: another run configuration. The picker asks again, with
            // the target just used first; the launch joins the running session (same agent).
            LaunchRules.Launch serverLaunch = javaApp("stolen-server", ws, StolenServer.class.getName(), "80");
            MirrordService.Prepared second = mirrord.prepareLaunch(ws.toString(), serverLaunch);
            assertEquals(2, ui.pickerCalls().size());
            Targets.Item firstItem = ui.pickerCalls().get(1).get(0);
            assertEquals(target, firstItem.target(), "the most recent target comes first");
            assertTrue(firstItem.recent() && firstItem.description().startsWith("most recent"), firstItem.toString());
            assertEquals(sessionId, second.session().sessionId(), "the second launch joins the session");
            mirrord.refreshSessions();
            SessionsModel.Entry entry = Waits.session(mirrord.sessions(), sessionId, e -> e.agentPid() != null, WAIT);
            long agentPid = entry.agentPid();
            assertEquals(target, entry.target());

            Launched stolen = start(serverLaunch, second);
            try {
                stolen.waitLine("listening 80", WAIT);
                ClientNamespace.Answer alice = client.get("/alice", "alice");
                assertEquals("java-local", alice.servedBy(), "a request that matches the filter is stolen: " + alice);
                assertEquals("java-local: GET /alice\n", alice.body());
                stolen.waitLine("REQUEST GET /alice alice", WAIT);
                ClientNamespace.Answer bob = client.get("/bob", "bob");
                assertEquals("pod", bob.servedBy(), "a request that does not match goes to the pod: " + bob);

                TrafficModel.Row request = Waits.row(traffic, r -> r.summary().equals("GET /alice"), WAIT, "for GET /alice");
                assertEquals("HTTP in", request.type());
                assertEquals("steal", request.mode());
                assertEquals(200, request.statusCode());
                assertFalse(request.filter().isEmpty(), "the row names the filter that took it: " + request);
                assertTrue(request.details().contains(Map.entry("x-user", "alice")), request.details().toString());
                // The table's filters: text, method, status and mode.
                TrafficModel.Filter stolenGets = new TrafficModel.Filter("alice", "GET", TrafficModel.StatusClass.SUCCESS, "steal", null);
                assertEquals(List.of(request), traffic.rows(stolenGets));
                assertTrue(traffic.rows(new TrafficModel.Filter("alice", "POST", TrafficModel.StatusClass.ANY, null, null)).isEmpty());
                assertTrue(traffic.rows(new TrafficModel.Filter("alice", null, TrafficModel.StatusClass.ANY, "mirror", null)).isEmpty());
                Waits.row(traffic, r -> r.kind() == TrafficModel.Kind.PORT && r.summary().equals(":80 subscribed"), WAIT, "for port 80");
                long stolenPid = stolen.pid();
                Waits.row(traffic, r -> r.kind() == TrafficModel.Kind.PROCESS && r.summary().contains("(pid " + stolenPid + ") joined"),
                        WAIT, "for the server joining");

                // 3. Relaunch: the program stops and its run configuration runs again. No picker
                // (the configuration's target is remembered), same session, same agent.
                stolen.close();
                Waits.row(traffic, r -> r.kind() == TrafficModel.Kind.PROCESS && r.summary().contains("(pid " + stolenPid + ") left"),
                        WAIT, "for the server leaving");
                MirrordService.Prepared third = mirrord.prepareLaunch(ws.toString(), serverLaunch);
                assertEquals(2, ui.pickerCalls().size(), "a relaunch does not ask for the target again");
                assertEquals(sessionId, third.session().sessionId());
                stolen = start(serverLaunch, third);
                stolen.waitLine("listening 80", WAIT);
                ClientNamespace.Answer again = client.get("/alice-again", "alice");
                assertEquals("java-local", again.servedBy(), again.toString());
                Waits.row(traffic, r -> r.summary().equals("GET /alice-again") && r.mode().equals("steal"), WAIT, "for GET /alice-again");
                mirrord.refreshSessions();
                SessionsModel.Entry same = mirrord.sessions().get(sessionId);
                assertEquals(agentPid, same.agentPid(), "the relaunch kept the agent");
                assertEquals(1, mirrord.sessions().live().size(), mirrord.sessions().all().toString());

                // 4. The daemon dies. Its session is lost (and said so); the daemon starts again;
                // the next launch of the configuration starts a new session on the same target.
                long oldDaemon = mirrord.daemon().pid();
                ProcessHandle.of(oldDaemon).orElseThrow().destroyForcibly();
                ui.waitNote(n -> n.level() == MirrordService.Level.WARNING && n.message().contains("stopped unexpectedly")
                        && n.message().contains(target), WAIT);
                SessionsModel.Entry lost = Waits.session(mirrord.sessions(), sessionId, e -> e.state().equals(SessionsModel.LOST), WAIT);
                assertNotNull(lost.message());
                stolen.close();
                MirrordService.Prepared fourth = mirrord.prepareLaunch(ws.toString(), serverLaunch);
                assertEquals(2, ui.pickerCalls().size(), "re-attach does not ask for the target again");
                String newSession = fourth.session().sessionId();
                assertNotEquals(sessionId, newSession);
                assertNotEquals(oldDaemon, mirrord.daemon().pid());
                assertEquals(newSession, mirrord.sessions().get(sessionId).replacedBy());
                stolen = start(serverLaunch, fourth);
                stolen.waitLine("listening 80", WAIT);
                ClientNamespace.Answer reattached = client.get("/alice-reattached", "alice");
                assertEquals("java-local", reattached.servedBy(), reattached.toString());
                TrafficModel.Row newRow = Waits.row(traffic, r -> r.summary().equals("GET /alice-reattached"), WAIT,
                        "for GET /alice-reattached");
                assertEquals(newSession, newRow.sessionId());
                assertEquals(sessionId, request.sessionId(), "rows of the lost session stay");
                assertTrue(traffic.rows().contains(request));

                // 5. Stop the session: the pod gets the requests again.
                mirrord.stopSession(newSession);
                Waits.session(mirrord.sessions(), newSession, e -> e.state().equals(SessionsModel.STOPPED), WAIT);
                assertTrue(mirrord.sessions().live().isEmpty(), mirrord.sessions().all().toString());
                ClientNamespace.Answer after = client.get("/alice-after-stop", "alice");
                assertEquals("pod", after.servedBy(), after.toString());
            } finally {
                stolen.close();
            }
            assertNull(ui.notes().stream().filter(n -> n.level() == MirrordService.Level.ERROR).findFirst().orElse(null),
                    "no error was shown: " + ui.notes());
        }
    }

    @Test
    void aKilledAgentIsShownAsAnErrorAndTheNextLaunchStartsAgain() throws Exception {
        Path ws = workspace("ws-agent");
        RecordingUi ui = new RecordingUi(this::pickOurTarget);
        try (MirrordService mirrord = service(ui, "daemon-2.log")) {
            LaunchRules.Launch serverLaunch = javaApp("stolen-server", ws, StolenServer.class.getName(), "80");
            String sessionId = mirrord.prepareLaunch(ws.toString(), serverLaunch).session().sessionId();
            mirrord.refreshSessions();
            long agentPid = Waits.session(mirrord.sessions(), sessionId, e -> e.agentPid() != null, WAIT).agentPid();
            ProcessHandle.of(agentPid).orElseThrow().destroyForcibly();
            // The daemon reports it (sessionChanged error): a balloon, the session's state, a row.
            RecordingUi.Note note = ui.waitNote(n -> n.level() == MirrordService.Level.ERROR && n.message().contains("agent exited"), WAIT);
            assertTrue(note.message().startsWith("mirrord: "), note.message());
            SessionsModel.Entry failed = Waits.session(mirrord.sessions(), sessionId, e -> e.state().equals(SessionsModel.ERROR), WAIT);
            assertTrue(failed.message().contains("agent exited"), failed.message());
            Waits.row(mirrord.traffic(), r -> r.kind() == TrafficModel.Kind.ERROR && r.sessionId().equals(sessionId), WAIT,
                    "for the agent's death");
            // The next launch gets a new session (and agent) on the same target, without asking.
            MirrordService.Prepared again = mirrord.prepareLaunch(ws.toString(), serverLaunch);
            assertNotEquals(sessionId, again.session().sessionId());
            assertEquals(1, ui.pickerCalls().size());
            try (Launched stolen = start(serverLaunch, again)) {
                stolen.waitLine("listening 80", WAIT);
                ClientNamespace.Answer alice = client.get("/alice-new-agent", "alice");
                assertEquals("java-local", alice.servedBy(), alice.toString());
            }
        }
    }
}
