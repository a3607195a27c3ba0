package io.mirrord.jetbrains.core;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import java.util.Locale;

/**
 * What a failed request means for the IDE: the daemon's {@code ErrorKind}
 * (protocol/src/api.rs), sent as {@code {"kind": "..."}} in the JSON-RPC error's {@code data}
 * (the values below in snake_case). The plugin matches the kind, never the message, which is
 * for people. The plugin ships with its daemon, so a kind it does not know is a bug, shown as
 * {@link #OTHER}.
 */
public enum ErrorKind {
    /** No target in the request or the configuration: ask the user for one. */
    NO_TARGET,
    /** A target that does not parse, or that this build cannot reach. */
    BAD_TARGET,
    /** The configuration file is wrong (file, line and column are in the message). */
    CONFIG,
    /** The session could not start (the agent failed or did not become ready). */
    SESSION_START,
    /** The session does not exist (any more). */
    NO_SESSION,
    /** The Kubernetes cluster could not be reached or refused a request. */
    CLUSTER,
    /** The daemon failed in a way it has no kind for. */
    INTERNAL,
    /** The request itself was malformed (a JSON-RPC protocol error: a plugin bug). */
    PROTOCOL,
    /** An error without a known kind. */
    OTHER;

    public static ErrorKind of(RpcException e) {
        JsonElement data = e.data();
        if (data instanceof JsonObject o) {
            String kind = Json.str(o, "kind", null);
            if (kind != null) {
                try {
                    return valueOf(kind.trim().toUpperCase(Locale.ROOT));
                } catch (IllegalArgumentException unknown) {
                    return OTHER;
                }
            }
        }
        long code = e.code();
        if (code == -32700 || code == -32600 || code == -32601 || code == -32602) {
            return PROTOCOL;
        }
        return OTHER;
    }
}
