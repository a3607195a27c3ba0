package io.mirrord.jetbrains.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;

/**
 * What a run configuration's launch becomes with mirrord, the same rules as the VS Code
 * extension's ({@code vscode-extension/src/logic/launch.ts}): whether mirrord applies (attach
 * configurations never; {@code MIRRORD_ACTIVE} in the configuration's env wins; else the
 * toggle), the {@code startSession} parameters, and the session's environment merged into the
 * launch's ({@code env} overrides, {@code LD_PRELOAD} keeps the launch's own entries,
 * {@code envToUnset} is removed).
 */
public final class LaunchRules {
    private LaunchRules() {}

    /** Why mirrord does or does not run for a launch. */
    public enum Reason {
        /** Attaching to a running process: nothing is launched, nothing to inject into. */
        ATTACH,
        /** {@code MIRRORD_ACTIVE=1} in the configuration's env. */
        FORCED_ON,
        /** {@code MIRRORD_ACTIVE=0}. */
        FORCED_OFF,
        /** The project's toggle is on. */
        ENABLED,
        /** The project's toggle is off. */
        DISABLED,
        /** The configuration already carries a session ({@code MIRRORD_SESSION} is set). */
        ALREADY
    }

    public record Decision(boolean active, Reason reason) {}

    /**
     * A launch as the platform part sees it in a run configuration, whatever its language.
     *
     * @param name the run configuration's name (recent targets and session reuse are per name)
     * @param attach whether it attaches to a running process (remote JVM debug, attach to PID)
     * @param debuggerType e.g. "java", "python", "node", "go"
     * @param env the configuration's own environment variables
     */
    public record Launch(
            String name,
            boolean attach,
            String program,
            List<String> args,
            String cwd,
            String debuggerType,
            Map<String, String> env) {
        public Launch {
            args = args == null ? List.of() : List.copyOf(args);
            env = env == null ? Map.of() : Map.copyOf(nonNullValues(env));
        }
    }

    private static Map<String, String> nonNullValues(Map<String, String> env) {
        Map<String, String> out = new LinkedHashMap<>();
        env.forEach((k, v) -> {
            if (k != null && v != null) {
                out.put(k, v);
            }
        });
        return out;
    }

    private static final Set<String> TRUE_VALUES = Set.of("1", "true", "yes", "on");
    private static final Set<String> FALSE_VALUES = Set.of("0", "false", "no", "off");

    /** {@code MIRRORD_ACTIVE} of an env: TRUE, FALSE, or {@code null} when unset or unreadable. */
    public static Boolean mirrordActiveOverride(Map<String, String> env) {
        String raw = env == null ? null : env.get("MIRRORD_ACTIVE");
        if (raw == null) {
            return null;
        }
        String v = raw.trim().toLowerCase(Locale.ROOT);
        if (TRUE_VALUES.contains(v)) {
            return Boolean.TRUE;
        }
        if (FALSE_VALUES.contains(v)) {
            return Boolean.FALSE;
        }
        return null;
    }

    /** Whether mirrord runs for this launch. */
    public static Decision decide(Launch launch, boolean toggleOn) {
        if (launch.attach()) {
            return new Decision(false, Reason.ATTACH);
        }
        String session = launch.env().get("MIRRORD_SESSION");
        if (session != null && !session.isEmpty()) {
            return new Decision(false, Reason.ALREADY);
        }
        Boolean forced = mirrordActiveOverride(launch.env());
        if (Boolean.TRUE.equals(forced)) {
            return new Decision(true, Reason.FORCED_ON);
        }
        if (Boolean.FALSE.equals(forced)) {
            return new Decision(false, Reason.FORCED_OFF);
        }
        return toggleOn ? new Decision(true, Reason.ENABLED) : new Decision(false, Reason.DISABLED);
    }

    /** Program arguments of a configuration that keeps them as one string (split at whitespace). */
    public static List<String> splitArgs(String args) {
        if (args == null || args.isBlank()) {
            return List.of();
        }
        return Arrays.asList(args.trim().split("\\s+"));
    }

    /** {@code mirrord/startSession} parameters for a launch; {@code cwd} defaults to the project. */
    public static Api.StartSessionParams startSessionParams(String workspaceFolder, Launch launch, String target) {
        String cwd = launch.cwd() != null && !launch.cwd().isEmpty() ? launch.cwd() : workspaceFolder;
        Api.LaunchInfo info = new Api.LaunchInfo(
                emptyToNull(launch.program()), launch.args(), cwd, emptyToNull(launch.debuggerType()), launch.env());
        return new Api.StartSessionParams(workspaceFolder, null, emptyToNull(target), info);
    }

    private static String emptyToNull(String s) {
        return s == null || s.isEmpty() ? null : s;
    }

    /** The entries of an LD_PRELOAD value (separated by colons or whitespace). */
    public static List<String> preloadEntries(String value) {
        List<String> out = new ArrayList<>();
        if (value == null) {
            return out;
        }
        for (String e : value.split("[:\\s]+")) {
            if (!e.isEmpty()) {
                out.add(e);
            }
        }
        return out;
    }

    /** The session's LD_PRELOAD with every entry of the launch's own LD_PRELOAD kept in front. */
    public static String mergePreload(String launchValue, String sessionValue) {
        List<String> session = preloadEntries(sessionValue);
        LinkedHashSet<String> merged = new LinkedHashSet<>();
        for (String e : preloadEntries(launchValue)) {
            if (!session.contains(e)) {
                merged.add(e);
            }
        }
        merged.addAll(session);
        return String.join(":", merged);
    }

    /**
     * The launch's environment with the session's.
     *
     * @param env the variables to set (the configuration's, overridden by the session's)
     * @param unset variables the launched process must not have, even if the IDE's own
     *     environment has them (the platform part removes them from the inherited env)
     */
    public record LaunchEnvironment(Map<String, String> env, Set<String> unset) {}

    /** The session's environment applied to the launch's: see {@link LaunchEnvironment}. */
    public static LaunchEnvironment applySession(Map<String, String> launchEnv, Api.StartSessionResult result) {
        Map<String, String> original = launchEnv == null ? Map.of() : launchEnv;
        Map<String, String> env = new LinkedHashMap<>(original);
        Map<String, String> sessionEnv = result.env() == null ? Map.of() : result.env();
        for (Map.Entry<String, String> e : sessionEnv.entrySet()) {
            if (e.getKey().equals("LD_PRELOAD")) {
                env.put(e.getKey(), mergePreload(original.get("LD_PRELOAD"), e.getValue()));
            } else {
                env.put(e.getKey(), e.getValue());
            }
        }
        Set<String> unset = new LinkedHashSet<>();
        for (String k : result.envToUnset() == null ? List.<String>of() : result.envToUnset()) {
            // Invariant: a variable is never both set and unset; the session's own wins.
            if (!sessionEnv.containsKey(k)) {
                env.remove(k);
                unset.add(k);
            }
        }
        return new LaunchEnvironment(Map.copyOf(env), Set.copyOf(unset));
    }

    /**
     * Whether the launched process needs a whole environment of its own rather than the IDE's
     * plus additions: when a variable to unset is in the environment it would inherit (a
     * platform API that only adds variables cannot remove it).
     */
    public static boolean needsFullEnvironment(Map<String, String> inherited, LaunchEnvironment le) {
        return inherited != null && le.unset().stream().anyMatch(inherited::containsKey);
    }

    /**
     * The final environment of the launched process: the inherited one (the IDE's) minus
     * {@code unset}, plus {@code env}. For platform APIs that take a whole environment.
     */
    public static Map<String, String> processEnvironment(Map<String, String> inherited, LaunchEnvironment le) {
        Map<String, String> out = new LinkedHashMap<>(inherited == null ? Map.of() : inherited);
        le.unset().forEach(out::remove);
        out.putAll(le.env());
        return out;
    }
}
