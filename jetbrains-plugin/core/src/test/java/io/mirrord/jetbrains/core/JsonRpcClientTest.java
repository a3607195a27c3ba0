package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonElement;
import com.google.gson.JsonNull;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.channels.Channels;
import java.nio.channels.Pipe;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** The client against a scripted server on in-memory pipes. */
class JsonRpcClientTest {
    private static final Duration WAIT = Duration.ofSeconds(10);

    /** What the client reported to its handler, in order. */
    private final BlockingQueue<String> events = new LinkedBlockingQueue<>();
    private InputStream serverIn;
    private OutputStream serverOut;
    private JsonRpcClient client;

    private final JsonRpcClient.Handler handler = new JsonRpcClient.Handler() {
        @Override
        public void onNotification(String method, JsonElement params) {
            if (method.equals("test/boom")) {
                throw new IllegalStateException("boom");
            }
            events.add("notification " + method + " " + params);
        }

        @Override
        public JsonElement onRequest(String method, JsonElement params) throws RpcException {
            events.add("request " + method);
            if (method.equals("window/workDoneProgress/create")) {
                return JsonNull.INSTANCE;
            }
            throw new RpcException(JsonRpcClient.METHOD_NOT_FOUND, "no " + method, null);
        }

        @Override
        public void onProtocolError(String problem) {
            events.add("protocol " + problem);
        }

        @Override
        public void onClosed(String reason) {
            events.add("closed " + reason);
        }
    };

    @BeforeEach
    void connect() throws IOException {
        Pipe toServer = Pipe.open();
        Pipe toClient = Pipe.open();
        serverIn = Channels.newInputStream(toServer.source());
        serverOut = Channels.newOutputStream(toClient.sink());
        client = new JsonRpcClient("fake", Channels.newInputStream(toClient.source()),
                Channels.newOutputStream(toServer.sink()), handler);
    }

    @AfterEach
    void close() throws IOException {
        client.close();
        serverOut.close();
    }

    private JsonObject serverReads() throws IOException {
        return JsonParser.parseString(new String(LspFraming.read(serverIn), StandardCharsets.UTF_8)).getAsJsonObject();
    }

    private void serverWrites(String json) throws IOException {
        LspFraming.write(serverOut, json);
    }

    private String nextEvent() throws InterruptedException {
        String e = events.poll(WAIT.toMillis(), TimeUnit.MILLISECONDS);
        if (e == null) {
            throw new AssertionError("no event from the client within " + WAIT);
        }
        return e;
    }

    @Test
    void answersAreMatchedToRequestsByIdInAnyOrder() throws Exception {
        CompletableFuture<JsonElement> a = client.send("mirrord/listTargets", new JsonObject());
        CompletableFuture<JsonElement> b = client.send("mirrord/listSessions", null);
        JsonObject ra = serverReads();
        JsonObject rb = serverReads();
        assertEquals("2.0", ra.get("jsonrpc").getAsString());
        assertEquals("mirrord/listTargets", ra.get("method").getAsString());
        assertTrue(ra.has("params"));
        assertTrue(!rb.has("params"), "no params member when there are none: " + rb);
        serverWrites("{\"jsonrpc\":\"2.0\",\"id\":" + rb.get("id") + ",\"result\":{\"sessions\":[]}}");
        serverWrites("{\"jsonrpc\":\"2.0\",\"id\":" + ra.get("id") + ",\"result\":{\"targets\":[]}}");
        assertEquals("{\"targets\":[]}", a.get(10, TimeUnit.SECONDS).toString());
        assertEquals("{\"sessions\":[]}", b.get(10, TimeUnit.SECONDS).toString());
    }

    @Test
    void paramsLeaveOutNullFields() throws Exception {
        client.send("mirrord/startSession", new Api.StartSessionParams("/ws", null, null, null));
        JsonObject r = serverReads();
        assertEquals("{\"workspaceFolder\":\"/ws\"}", r.get("params").toString());
    }

    @Test
    void errorAnswersCarryCodeMessageAndData() throws Exception {
        CompletableFuture<JsonElement> a = client.send("mirrord/startSession", new JsonObject());
        JsonObject r = serverReads();
        serverWrites("{\"jsonrpc\":\"2.0\",\"id\":" + r.get("id")
                + ",\"error\":{\"code\":1,\"message\":\"nope\",\"data\":{\"kind\":\"no_target\"}}}");
        ExecutionException e = assertThrows(ExecutionException.class, () -> a.get(10, TimeUnit.SECONDS));
        RpcException rpc = assertInstanceOf(RpcException.class, e.getCause());
        assertEquals(1, rpc.code());
        assertEquals("nope", rpc.getMessage());
        assertEquals(ErrorKind.NO_TARGET, rpc.kind());
    }

    @Test
    void notificationsReachTheHandlerInOrder() throws Exception {
        serverWrites("{\"jsonrpc\":\"2.0\",\"method\":\"mirrord/traffic\",\"params\":{\"n\":1}}");
        serverWrites("{\"jsonrpc\":\"2.0\",\"method\":\"mirrord/sessionChanged\",\"params\":{\"n\":2}}");
        assertEquals("notification mirrord/traffic {\"n\":1}", nextEvent());
        assertEquals("notification mirrord/sessionChanged {\"n\":2}", nextEvent());
    }

    @Test
    void aFailingHandlerDoesNotStopTheReader() throws Exception {
        CompletableFuture<JsonElement> a = client.send("mirrord/listSessions", null);
        JsonObject r = serverReads();
        serverWrites("{\"jsonrpc\":\"2.0\",\"method\":\"test/boom\"}");
        serverWrites("{\"jsonrpc\":\"2.0\",\"id\":" + r.get("id") + ",\"result\":7}");
        assertEquals("7", a.get(10, TimeUnit.SECONDS).toString());
        String e = nextEvent();
        assertTrue(e.startsWith("protocol handling test/boom failed") && e.contains("boom"), e);
    }

    @Test
    void serverRequestsAreAnsweredWithResultNullOrMethodNotFound() throws Exception {
        serverWrites("{\"jsonrpc\":\"2.0\",\"id\":\"p1\",\"method\":\"window/workDoneProgress/create\",\"params\":{\"token\":\"t\"}}");
        JsonObject ok = serverReads();
        assertEquals("p1", ok.get("id").getAsString());
        assertTrue(ok.has("result") && ok.get("result").isJsonNull(), "result: null is written, not dropped: " + ok);
        serverWrites("{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"workspace/unknown\"}");
        JsonObject err = serverReads();
        assertEquals(7, err.get("id").getAsInt());
        assertEquals(JsonRpcClient.METHOD_NOT_FOUND, err.getAsJsonObject("error").get("code").getAsLong());
    }

    @Test
    void malformedFramesAndNonJsonRpcAreReportedAndSkipped() throws Exception {
        CompletableFuture<JsonElement> a = client.send("mirrord/listSessions", null);
        JsonObject r = serverReads();
        serverOut.write("Content-Length: nope\r\n\r\n".getBytes(StandardCharsets.US_ASCII));
        serverWrites("this is not json");
        serverWrites("[1,2]");
        serverWrites("{\"id\":" + r.get("id") + ",\"result\":1}");
        serverWrites("{\"jsonrpc\":\"2.0\",\"id\":99999,\"result\":1}");
        serverWrites("{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"Parse error\"}}");
        serverWrites("{\"jsonrpc\":\"2.0\",\"id\":" + r.get("id") + ",\"result\":{\"sessions\":[]}}");
        assertEquals("{\"sessions\":[]}", a.get(10, TimeUnit.SECONDS).toString());
        List<String> got = new ArrayList<>();
        for (int i = 0; i < 6; i++) {
            got.add(nextEvent());
        }
        assertTrue(got.get(0).contains("invalid Content-Length"), got.toString());
        assertTrue(got.get(1).contains("not JSON"), got.toString());
        assertTrue(got.get(2).contains("not a JSON-RPC 2.0 message"), got.toString());
        assertTrue(got.get(3).contains("not a JSON-RPC 2.0 message"), got.toString());
        assertTrue(got.get(4).contains("not pending"), got.toString());
        assertTrue(got.get(5).contains("Parse error"), got.toString());
        assertTrue(!client.isClosed());
    }

    @Test
    void anAnswerSplitIntoPiecesCompletesTheRequest() throws Exception {
        CompletableFuture<JsonElement> a = client.send("mirrord/listSessions", null);
        JsonObject r = serverReads();
        byte[] frame = LspFraming.frame(("{\"jsonrpc\":\"2.0\",\"id\":" + r.get("id") + ",\"result\":{\"ok\":true}}")
                .getBytes(StandardCharsets.UTF_8));
        for (int i = 0; i < frame.length; i += 7) {
            serverOut.write(frame, i, Math.min(7, frame.length - i));
            serverOut.flush();
            assertTrue(i + 7 >= frame.length || !a.isDone(), "not done before the last piece");
        }
        assertEquals("{\"ok\":true}", a.get(10, TimeUnit.SECONDS).toString());
    }

    @Test
    void aDaemonThatDiesMidRequestFailsThePendingAndLaterRequests() throws Exception {
        CompletableFuture<JsonElement> a = client.send("mirrord/startSession", new JsonObject());
        serverReads();
        // Half an answer, then the daemon is gone.
        serverOut.write("Content-Length: 50\r\n\r\n{\"jsonrpc\":\"2.0\",".getBytes(StandardCharsets.US_ASCII));
        serverOut.close();
        ExecutionException e = assertThrows(ExecutionException.class, () -> a.get(10, TimeUnit.SECONDS));
        DaemonDiedException died = assertInstanceOf(DaemonDiedException.class, e.getCause());
        assertTrue(died.getMessage().contains("stopped in the middle of a message"), died.getMessage());
        assertTrue(nextEvent().startsWith("closed fake stopped in the middle"));
        assertTrue(client.isClosed());
        MirrordException later = assertThrows(MirrordException.class,
                () -> client.request("mirrord/listSessions", null, WAIT));
        assertInstanceOf(DaemonDiedException.class, later);
        assertThrows(IOException.class, () -> client.notify("initialized", new JsonObject()));
    }

    @Test
    void aDaemonThatClosesBetweenFramesFailsThePendingRequest() throws Exception {
        CompletableFuture<JsonElement> a = client.send("mirrord/listTargets", null);
        serverReads();
        serverOut.close();
        ExecutionException e = assertThrows(ExecutionException.class, () -> a.get(10, TimeUnit.SECONDS));
        assertTrue(e.getCause().getMessage().contains("closed its output"), e.getCause().getMessage());
    }

    @Test
    void aRequestWithoutAnswerTimesOut() throws Exception {
        MirrordException e = assertThrows(MirrordException.class,
                () -> client.request("mirrord/listTargets", null, Duration.ofMillis(200)));
        assertTrue(e.getMessage().contains("did not answer mirrord/listTargets"), e.getMessage());
        // The late answer finds nothing waiting: reported, and the client goes on.
        JsonObject r = serverReads();
        serverWrites("{\"jsonrpc\":\"2.0\",\"id\":" + r.get("id") + ",\"result\":{}}");
        assertTrue(nextEvent().contains("which is not pending"));
        assertTrue(!client.isClosed());
    }
}
