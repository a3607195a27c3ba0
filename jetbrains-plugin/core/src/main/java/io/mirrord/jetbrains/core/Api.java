package io.mirrord.jetbrains.core;

import java.util.List;
import java.util.Map;

/**
 * The JSON shapes of mirrord-server's {@code mirrord/*} methods (protocol/src/api.rs): camelCase
 * fields; {@code null} fields are left out of what is sent. Traffic events stay JSON objects
 * ({@link TrafficModel} reads them tolerantly), since their fields differ per {@code type}.
 */
public final class Api {
    private Api() {}

    public static final String LIST_TARGETS = "mirrord/listTargets";
    public static final String VERIFY_CONFIG = "mirrord/verifyConfig";
    public static final String START_SESSION = "mirrord/startSession";
    public static final String STOP_SESSION = "mirrord/stopSession";
    public static final String LIST_SESSIONS = "mirrord/listSessions";
    public static final String TRAFFIC_HISTORY = "mirrord/trafficHistory";
    public static final String TRAFFIC = "mirrord/traffic";
    public static final String SESSION_CHANGED = "mirrord/sessionChanged";

    public record ListTargetsParams(String workspaceFolder, String configPath, String namespace) {}

    public record TargetInfo(String path, boolean available) {}

    public record ListTargetsResult(List<TargetInfo> targets, List<String> namespaces) {}

    public record LaunchInfo(String program, List<String> args, String cwd, String debuggerType, Map<String, String> env) {}

    public record StartSessionParams(String workspaceFolder, String configPath, String target, LaunchInfo launch) {
        public StartSessionParams withTarget(String newTarget) {
            return new StartSessionParams(workspaceFolder, configPath, newTarget, launch);
        }
    }

    public record StartSessionResult(String sessionId, Map<String, String> env, List<String> envToUnset) {}

    public record SessionIdParams(String sessionId) {}

    public record ProcessInfo(long pid, String executable) {}

    public record SessionInfo(
            String sessionId,
            String target,
            String state,
            List<Integer> ports,
            List<ProcessInfo> processes,
            long startedAt,
            Long agentPid) {}

    public record ListSessionsResult(List<SessionInfo> sessions) {}

    public record TrafficHistoryParams(String sessionId, Integer limit) {}

    public record SessionChanged(String sessionId, String state, String message) {}

    public record VerifyConfigParams(String path) {}

    public record ConfigDiagnostic(String message, int line, int column, String severity) {}

    public record VerifyConfigResult(boolean ok, String target, List<ConfigDiagnostic> diagnostics) {}
}
