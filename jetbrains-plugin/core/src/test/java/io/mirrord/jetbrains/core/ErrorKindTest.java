package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.google.gson.JsonParser;
import org.junit.jupiter.api.Test;

class ErrorKindTest {
    private static ErrorKind kind(long code, String message, String data) {
        return new RpcException(code, message, data == null ? null : JsonParser.parseString(data)).kind();
    }

    @Test
    void theKindInDataWins() {
        assertEquals(ErrorKind.CONFIG, kind(1, "no target: whatever", "{\"kind\":\"config\"}"));
        assertEquals(ErrorKind.NO_SESSION, kind(1, "x", "{\"kind\":\"no_session\"}"));
        // An unknown kind falls back to the message.
        assertEquals(ErrorKind.NO_TARGET, kind(1, "no target: choose one", "{\"kind\":\"brand_new\"}"));
    }

    @Test
    void withoutDataTheDaemonsMessagesAreRecognised() {
        assertEquals(ErrorKind.NO_TARGET, kind(1, "no target: choose one (mirrord/listTargets) or set \"target\"", null));
        assertEquals(ErrorKind.NO_SESSION, kind(1, "no session 1234", null));
        assertEquals(ErrorKind.AGENT, kind(1, "mirrord could not start a session on pid/9: no such process", null));
        assertEquals(ErrorKind.CONFIG, kind(1, "/ws/.mirrord/mirrord.json:3:7: unknown field `foo`", null));
        assertEquals(ErrorKind.PROTOCOL, kind(-32602, "Invalid params", null));
        assertEquals(ErrorKind.OTHER, kind(1, "something else", "[1]"));
    }
}
