package io.mirrord.jetbrains.core;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import java.util.Locale;

/**
 * What a failed request means for the IDE. The daemon's error {@code data} may carry
 * {@code {"kind": "..."}} (the values below in snake_case); a daemon that does not send it is
 * understood by the JSON-RPC code and the start of its message, as the VS Code extension does.
 */
public enum ErrorKind {
    /** No target in the request or the configuration: ask the user for one. */
    NO_TARGET,
    /** The session does not exist (any more). */
    NO_SESSION,
    /** The configuration file is wrong (file, line and column are in the message). */
    CONFIG,
    /** The agent could not be started on the target. */
    AGENT,
    /** The request itself was malformed (a bug in the plugin, or a daemon of another version). */
    PROTOCOL,
    /** Anything else. */
    OTHER;

    public static ErrorKind of(RpcException e) {
        JsonElement data = e.data();
        if (data instanceof JsonObject o) {
            String kind = Json.str(o, "kind", null);
            if (kind != null) {
                try {
                    return valueOf(kind.trim().toUpperCase(Locale.ROOT));
                } catch (IllegalArgumentException unknown) {
                    // A kind this plugin does not know yet: fall back to the message.
                }
            }
        }
        long code = e.code();
        if (code == -32700 || code == -32600 || code == -32601 || code == -32602) {
            return PROTOCOL;
        }
        String m = e.getMessage() == null ? "" : e.getMessage().trim().toLowerCase(Locale.ROOT);
        if (m.startsWith("no target")) {
            return NO_TARGET;
        }
        if (m.startsWith("no session")) {
            return NO_SESSION;
        }
        if (m.contains("could not start a session")) {
            return AGENT;
        }
        // The daemon's configuration errors read "<file>:<line>:<column>: <message>".
        if (m.matches("(?s)^.+\\.(json|toml|yaml|yml):\\d+:\\d+: .*")) {
            return CONFIG;
        }
        return OTHER;
    }
}
