package io.mirrord.jetbrains.core;

import com.google.gson.JsonElement;
import com.google.gson.JsonNull;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;
import com.google.gson.JsonPrimitive;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

/**
 * JSON-RPC 2.0 over one pair of streams with LSP framing: requests with ids, notifications in
 * both directions, and requests from the server (answered by a {@link Handler}).
 *
 * <p>One reader thread reads the server's frames in order. A frame that cannot be read or is
 * not a JSON-RPC message is reported to the handler and skipped; the end of the input fails
 * every pending request with a {@link DaemonDiedException} (a daemon that dies mid-request is
 * reported, never a silent hang), as does every later request.
 */
public final class JsonRpcClient implements AutoCloseable {
    /** What the client does with what the server sends on its own. */
    public interface Handler {
        /** A notification (no answer). Runs on the reader thread: keep it short. */
        void onNotification(String method, JsonElement params);

        /**
         * A request from the server; the returned value is the result ({@code null} for JSON
         * null). Throw {@link RpcException} to answer with an error.
         */
        JsonElement onRequest(String method, JsonElement params) throws RpcException;

        /** Something unreadable came from the server (it was skipped). */
        void onProtocolError(String problem);

        /** The input ended; {@code reason} says how. Called once. */
        void onClosed(String reason);
    }

    /** JSON-RPC "method not found". */
    public static final long METHOD_NOT_FOUND = -32601;

    private final String name;
    private final InputStream in;
    private final OutputStream out;
    private final Handler handler;
    private final AtomicLong nextId = new AtomicLong(1);
    /** request id → the caller waiting for its answer. */
    private final Map<Long, CompletableFuture<JsonElement>> pending = new ConcurrentHashMap<>();
    private final AtomicBoolean closed = new AtomicBoolean();
    private volatile String closedReason;
    private final Thread reader;

    /**
     * Starts reading {@code in} on a daemon thread named after {@code name}.
     *
     * @param name for messages and the thread's name (e.g. "mirrord-server")
     */
    public JsonRpcClient(String name, InputStream in, OutputStream out, Handler handler) {
        this.name = name;
        this.in = in;
        this.out = out;
        this.handler = handler;
        this.reader = new Thread(this::readLoop, name + " reader");
        this.reader.setDaemon(true);
        this.reader.start();
    }

    public boolean isClosed() {
        return closed.get();
    }

    /** Why the connection is closed, or {@code null} while it is open. */
    public String closedReason() {
        return closedReason;
    }

    /** Sends a request and returns the future of its result (completes exceptionally with a
     * {@link RpcException} for an error answer or a {@link DaemonDiedException}). */
    public CompletableFuture<JsonElement> send(String method, Object params) {
        CompletableFuture<JsonElement> answer = new CompletableFuture<>();
        long id = nextId.getAndIncrement();
        // Invariant: registered before the request is written, so even an instant answer (or
        // the end of the input) finds it.
        pending.put(id, answer);
        if (closed.get()) {
            fail(id, closedReason);
            return answer;
        }
        JsonObject msg = new JsonObject();
        msg.addProperty("jsonrpc", "2.0");
        msg.addProperty("id", id);
        msg.addProperty("method", method);
        if (params != null) {
            msg.add("params", params instanceof JsonElement e ? e : Json.toTree(params));
        }
        try {
            write(msg);
        } catch (IOException e) {
            fail(id, name + " cannot be written to: " + e.getMessage());
        }
        return answer;
    }

    /** Sends a request and waits for its result at most {@code timeout}. */
    public JsonElement request(String method, Object params, Duration timeout) throws MirrordException {
        CompletableFuture<JsonElement> answer = send(method, params);
        try {
            return answer.get(timeout.toMillis(), TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            // A late answer is then reported as not pending; the entry must not stay forever.
            pending.values().remove(answer);
            answer.cancel(false);
            throw new MirrordException(name + " did not answer " + method + " within " + timeout.toSeconds() + " s");
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new MirrordException("interrupted while waiting for " + method);
        } catch (ExecutionException e) {
            if (e.getCause() instanceof MirrordException m) {
                throw m;
            }
            throw new MirrordException(method + " failed: " + e.getCause(), e.getCause());
        }
    }

    public void notify(String method, Object params) throws IOException {
        JsonObject msg = new JsonObject();
        msg.addProperty("jsonrpc", "2.0");
        msg.addProperty("method", method);
        if (params != null) {
            msg.add("params", params instanceof JsonElement e ? e : Json.toTree(params));
        }
        write(msg);
    }

    private void write(JsonObject msg) throws IOException {
        if (closed.get()) {
            throw new IOException(closedReason);
        }
        synchronized (out) {
            LspFraming.write(out, Json.WIRE.toJson(msg));
        }
    }

    private void readLoop() {
        String reason;
        while (true) {
            byte[] body;
            try {
                body = LspFraming.read(in);
            } catch (LspFraming.MalformedFrameException e) {
                report(name + " sent " + e.getMessage());
                continue;
            } catch (EOFException e) {
                reason = name + " stopped in the middle of a message (" + e.getMessage() + ")";
                break;
            } catch (IOException e) {
                reason = name + "'s output could not be read: " + e.getMessage();
                break;
            }
            if (body == null) {
                reason = name + " closed its output";
                break;
            }
            try {
                dispatch(body);
            } catch (RuntimeException e) {
                // Invariant: nothing a handler does stops the reader, or pending requests would hang.
                report("handling a message from " + name + " failed: " + e);
            }
        }
        close(reason);
    }

    /** Tells the handler about unreadable input; a handler failure here is dropped. */
    private void report(String problem) {
        try {
            handler.onProtocolError(problem);
        } catch (RuntimeException ignored) {
            // Nothing else to tell it with.
        }
    }

    private void dispatch(byte[] body) {
        JsonObject msg;
        try {
            JsonElement parsed = JsonParser.parseString(new String(body, StandardCharsets.UTF_8));
            if (!(parsed instanceof JsonObject o) || !"2.0".equals(Json.str(o, "jsonrpc", null))) {
                report(name + " sent something that is not a JSON-RPC 2.0 message: " + cut(body));
                return;
            }
            msg = o;
        } catch (JsonParseException e) {
            report(name + " sent a frame that is not JSON: " + cut(body));
            return;
        }
        JsonElement id = msg.get("id");
        String method = Json.str(msg, "method", null);
        if (method != null && (id == null || id.isJsonNull())) {
            try {
                handler.onNotification(method, msg.get("params"));
            } catch (RuntimeException e) {
                report("handling " + method + " failed: " + e);
            }
        } else if (method != null) {
            answerServerRequest(id, method, msg.get("params"));
        } else if (id instanceof JsonPrimitive p && p.isNumber()) {
            CompletableFuture<JsonElement> answer = pending.remove(p.getAsLong());
            if (answer == null) {
                report(name + " answered request " + p + ", which is not pending");
            } else if (msg.get("error") instanceof JsonObject error) {
                answer.completeExceptionally(RpcException.of(error));
            } else if (msg.has("result")) {
                answer.complete(msg.get("result"));
            } else {
                answer.completeExceptionally(new RpcException(-32603, name + " sent an answer without result or error", null));
            }
        } else {
            // An error about a message the server could not read (id null), or an id we never use.
            String error = msg.get("error") instanceof JsonObject e ? Json.str(e, "message", "") : cut(body);
            report(name + " reported: " + error);
        }
    }

    private void answerServerRequest(JsonElement id, String method, JsonElement params) {
        JsonObject reply = new JsonObject();
        reply.addProperty("jsonrpc", "2.0");
        reply.add("id", id);
        try {
            JsonElement result = handler.onRequest(method, params);
            reply.add("result", result == null ? JsonNull.INSTANCE : result);
        } catch (RpcException e) {
            JsonObject error = new JsonObject();
            error.addProperty("code", e.code());
            error.addProperty("message", e.getMessage());
            reply.add("error", error);
        } catch (RuntimeException e) {
            JsonObject error = new JsonObject();
            error.addProperty("code", -32603);
            error.addProperty("message", "the IDE failed to handle " + method + ": " + e);
            reply.add("error", error);
        }
        try {
            write(reply);
        } catch (IOException e) {
            // The end of the input follows and reports it.
        }
    }

    private void fail(long id, String reason) {
        CompletableFuture<JsonElement> answer = pending.remove(id);
        if (answer != null) {
            answer.completeExceptionally(new DaemonDiedException(reason));
        }
    }

    /** Stops using the streams; pending and later requests fail with {@code reason}. */
    public void close(String reason) {
        if (!closed.compareAndSet(false, true)) {
            return;
        }
        closedReason = reason;
        for (Long id : pending.keySet()) {
            fail(id, reason);
        }
        try {
            out.close();
        } catch (IOException ignored) {
            // Closing a pipe to a dead process: nothing left to do.
        }
        handler.onClosed(reason);
    }

    @Override
    public void close() {
        close(name + " connection closed by the IDE");
    }

    private static String cut(byte[] body) {
        String s = new String(body, 0, Math.min(body.length, 120), StandardCharsets.UTF_8);
        return body.length > 120 ? s + "…" : s;
    }
}
