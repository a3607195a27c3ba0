package io.mirrord.jetbrains.core.testing;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonNull;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import io.mirrord.jetbrains.core.Json;
import io.mirrord.jetbrains.core.LspFraming;
import java.io.BufferedInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * A stand-in for {@code mirrord-server --stdio} in the unit tests of the daemon's life cycle:
 * a separate process speaking the same protocol, which can die in the middle of an answer.
 *
 * <ul>
 *   <li>{@code initialize} answers as mirrord-server (as "other-server" with argument
 *       {@code --impostor});
 *   <li>{@code mirrord/listTargets}: {@code pid/1} (available) and {@code pid/2} (not);
 *   <li>{@code mirrord/startSession}: without a target, the daemon's "no target" error; with
 *       target {@code pid/die}, half an answer and exit 3; target {@code pid/once} works once,
 *       then fails as a vanished process does; otherwise a progress (create, begin, end) and a
 *       session {@code s-<pid>-<n>};
 *   <li>{@code mirrord/listSessions}: the sessions started; {@code shutdown}: null; {@code exit}:
 *       exit 0.
 * </ul>
 */
public final class FakeDaemon {
    private static OutputStream out;

    private static void send(JsonObject msg) throws IOException {
        msg.addProperty("jsonrpc", "2.0");
        LspFraming.write(out, Json.WIRE.toJson(msg));
    }

    private static void answer(JsonElement id, JsonElement result) throws IOException {
        JsonObject r = new JsonObject();
        r.add("id", id);
        r.add("result", result == null ? JsonNull.INSTANCE : result);
        send(r);
    }

    public static void main(String[] args) throws IOException {
        boolean impostor = args.length > 0 && args[0].equals("--impostor");
        out = System.out;
        InputStream in = new BufferedInputStream(System.in);
        long pid = ProcessHandle.current().pid();
        List<JsonObject> sessions = new ArrayList<>();
        int progress = 0;
        boolean onceUsed = false;
        while (true) {
            byte[] body = LspFraming.read(in);
            if (body == null) {
                System.exit(0);
            }
            JsonObject msg = JsonParser.parseString(new String(body, StandardCharsets.UTF_8)).getAsJsonObject();
            String method = Json.str(msg, "method", "");
            JsonElement id = msg.get("id");
            JsonObject params = msg.get("params") instanceof JsonObject p ? p : new JsonObject();
            switch (method) {
                case "initialize" -> {
                    JsonObject info = new JsonObject();
                    info.addProperty("name", impostor ? "other-server" : "mirrord-server");
                    JsonObject result = new JsonObject();
                    result.add("serverInfo", info);
                    result.add("capabilities", new JsonObject());
                    answer(id, result);
                }
                case "mirrord/listTargets" -> {
                    JsonArray targets = new JsonArray();
                    targets.add(Json.toTree(new io.mirrord.jetbrains.core.Api.TargetInfo("pid/1", true)));
                    targets.add(Json.toTree(new io.mirrord.jetbrains.core.Api.TargetInfo("pid/2", false)));
                    JsonObject result = new JsonObject();
                    result.add("targets", targets);
                    answer(id, result);
                }
                case "mirrord/startSession" -> {
                    String target = Json.str(params, "target", null);
                    if (target == null) {
                        JsonObject error = new JsonObject();
                        error.addProperty("code", 1);
                        error.addProperty("message", "no target: choose one (mirrord/listTargets) or set \"target\" in the configuration");
                        error.add("data", kind("no_target"));
                        JsonObject r = new JsonObject();
                        r.add("id", id);
                        r.add("error", error);
                        send(r);
                        continue;
                    }
                    if (target.equals("pid/once") && onceUsed) {
                        JsonObject error = new JsonObject();
                        error.addProperty("code", 1);
                        error.addProperty("message", "mirrord could not start a session on pid/once: no process 4242");
                        error.add("data", kind("session_start"));
                        JsonObject r = new JsonObject();
                        r.add("id", id);
                        r.add("error", error);
                        send(r);
                        continue;
                    }
                    onceUsed |= target.equals("pid/once");
                    if (target.equals("pid/die")) {
                        out.write("Content-Length: 80\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":".getBytes(StandardCharsets.US_ASCII));
                        out.flush();
                        Runtime.getRuntime().halt(3);
                    }
                    String token = "fake-" + (++progress);
                    JsonObject create = new JsonObject();
                    create.addProperty("id", "create-" + progress);
                    create.addProperty("method", "window/workDoneProgress/create");
                    JsonObject tokenParams = new JsonObject();
                    tokenParams.addProperty("token", token);
                    create.add("params", tokenParams);
                    send(create);
                    // The IDE's answer to the create comes first (it is not read here: the
                    // loop reads it next and ignores it, as it has no method).
                    send(progress(token, "begin", "title", "mirrord: starting the agent for " + target));
                    send(progress(token, "end", "message", "agent ready"));
                    String sessionId = "s-" + pid + "-" + (sessions.size() + 1);
                    JsonObject env = new JsonObject();
                    env.addProperty("MIRRORD_SESSION", sessionId);
                    env.addProperty("LD_PRELOAD", "/opt/mirrord/libmirrord_layer.so");
                    JsonArray unset = new JsonArray();
                    unset.add("MIRRORD_ACTIVE");
                    unset.add("MIRRORD_CONFIG_FILE");
                    JsonObject result = new JsonObject();
                    result.addProperty("sessionId", sessionId);
                    result.add("env", env);
                    result.add("envToUnset", unset);
                    JsonObject info = new JsonObject();
                    info.addProperty("sessionId", sessionId);
                    info.addProperty("target", target);
                    info.addProperty("state", "ready");
                    info.add("ports", new JsonArray());
                    info.add("processes", new JsonArray());
                    info.addProperty("startedAt", System.currentTimeMillis());
                    info.addProperty("agentPid", pid);
                    sessions.add(info);
                    answer(id, result);
                }
                case "mirrord/listSessions" -> {
                    JsonObject result = new JsonObject();
                    JsonArray list = new JsonArray();
                    sessions.forEach(list::add);
                    result.add("sessions", list);
                    answer(id, result);
                }
                case "shutdown" -> answer(id, null);
                case "exit" -> System.exit(0);
                default -> {
                    if (id != null && !method.isEmpty()) {
                        answer(id, new JsonObject());
                    }
                }
            }
        }
    }

    /** The daemon's error {@code data}: {@code {"kind": ...}}. */
    private static JsonObject kind(String kind) {
        JsonObject data = new JsonObject();
        data.addProperty("kind", kind);
        return data;
    }

    private static JsonObject progress(String token, String kind, String key, String text) {
        JsonObject value = new JsonObject();
        value.addProperty("kind", kind);
        value.addProperty(key, text);
        JsonObject params = new JsonObject();
        params.addProperty("token", token);
        params.add("value", value);
        JsonObject n = new JsonObject();
        n.addProperty("method", "$/progress");
        n.add("params", params);
        return n;
    }

    /** The command that runs this class in a new JVM, with this JVM's classes. */
    public static io.mirrord.jetbrains.core.Daemon.Command command(String... args) {
        List<String> argv = new ArrayList<>();
        argv.add(ProcessHandle.current().info().command().orElse("java"));
        argv.add("-cp");
        argv.add(String.join(java.io.File.pathSeparator, location(FakeDaemon.class), location(Json.class),
                location(JsonParser.class)));
        argv.add(FakeDaemon.class.getName());
        argv.addAll(List.of(args));
        return new io.mirrord.jetbrains.core.Daemon.Command(argv, java.util.Map.of());
    }

    private static String location(Class<?> c) {
        try {
            return java.nio.file.Path.of(c.getProtectionDomain().getCodeSource().getLocation().toURI()).toString();
        } catch (java.net.URISyntaxException e) {
            throw new IllegalStateException(e);
        }
    }
}
