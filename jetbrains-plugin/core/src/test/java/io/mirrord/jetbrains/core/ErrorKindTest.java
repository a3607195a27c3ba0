package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.google.gson.JsonParser;
import org.junit.jupiter.api.Test;

class ErrorKindTest {
    private static ErrorKind kind(long code, String message, String data) {
        return new RpcException(code, message, data == null ? null : JsonParser.parseString(data)).kind();
    }

    @Test
    void theKindInDataDecidesNotTheMessage() {
        assertEquals(ErrorKind.CONFIG, kind(1, "no target: whatever", "{\"kind\":\"config\"}"));
        assertEquals(ErrorKind.NO_SESSION, kind(1, "x", "{\"kind\":\"no_session\"}"));
        assertEquals(ErrorKind.SESSION_START, kind(1, "x", "{\"kind\":\"session_start\"}"));
        assertEquals(ErrorKind.BAD_TARGET, kind(1, "x", "{\"kind\":\"bad_target\"}"));
        assertEquals(ErrorKind.CLUSTER, kind(1, "x", "{\"kind\":\"cluster\"}"));
        assertEquals(ErrorKind.INTERNAL, kind(1, "x", "{\"kind\":\"internal\"}"));
        // Words never count: the same message without its kind is no "no target".
        assertEquals(ErrorKind.OTHER, kind(1, "no target: choose one", null));
        assertEquals(ErrorKind.OTHER, kind(1, "no target: choose one", "{\"kind\":\"brand_new\"}"));
    }

    @Test
    void jsonRpcProtocolErrorsAreTheirOwnKind() {
        assertEquals(ErrorKind.PROTOCOL, kind(-32602, "Invalid params", null));
        assertEquals(ErrorKind.OTHER, kind(1, "something else", "[1]"));
    }
}
