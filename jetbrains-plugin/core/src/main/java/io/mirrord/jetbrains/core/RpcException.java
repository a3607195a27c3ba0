package io.mirrord.jetbrains.core;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

/** A JSON-RPC error answer of the daemon: its code, message and {@code data}. */
public final class RpcException extends MirrordException {
    private static final long serialVersionUID = 1L;

    private final long code;
    /** Not serialised: an exception that crosses a serialisation boundary keeps its message. */
    private final transient JsonElement data;

    public RpcException(long code, String message, JsonElement data) {
        super(message);
        this.code = code;
        this.data = data;
    }

    /** From the {@code error} member of a response. */
    public static RpcException of(JsonObject error) {
        long code = Json.num(error, "code", 0);
        String message = Json.str(error, "message", "mirrord-server answered with an error (code " + code + ")");
        return new RpcException(code, message, error.get("data"));
    }

    public long code() {
        return code;
    }

    /** The error's {@code data}, or {@code null}. */
    public JsonElement data() {
        return data;
    }

    /** What kind of failure this is; see {@link ErrorKind#of}. */
    public ErrorKind kind() {
        return ErrorKind.of(this);
    }
}
