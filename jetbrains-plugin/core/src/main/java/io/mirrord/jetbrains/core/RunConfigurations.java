package io.mirrord.jetbrains.core;

import java.util.Map;
import java.util.Set;

/**
 * Which IntelliJ run configurations mirrord applies to, by their configuration type id (the
 * platform part passes {@code configuration.getType().getId()}), and what kind of launch each
 * is. Attach configurations are listed so that the launch rules can say why they are skipped.
 */
public final class RunConfigurations {
    private RunConfigurations() {}

    /** configuration type id → the debugger type the daemon is told. */
    private static final Map<String, String> LAUNCHES = Map.ofEntries(
            Map.entry("Application", "java"),
            Map.entry("JetRunConfigurationType", "java"),
            Map.entry("KotlinStandaloneScriptRunConfigurationType", "java"),
            Map.entry("JUnit", "java"),
            Map.entry("TestNG", "java"),
            Map.entry("JarApplication", "java"),
            Map.entry("PythonConfigurationType", "python"),
            Map.entry("tests", "python"),
            Map.entry("NodeJSConfigurationType", "node"),
            Map.entry("GoApplicationRunConfiguration", "go"),
            Map.entry("GoTestRunConfiguration", "go"));

    /** Configurations that attach to a running process: mirrord never applies to them. */
    private static final Set<String> ATTACHES = Set.of("Remote", "PyRemoteDebugConfigurationType",
            "ChromiumRemoteDebugType", "JavascriptDebugType", "GoRemoteDebugConfigurationType");

    /** Whether the plugin offers mirrord for configurations of this type. */
    public static boolean isSupported(String typeId) {
        return typeId != null && (LAUNCHES.containsKey(typeId) || ATTACHES.contains(typeId));
    }

    public static boolean isAttach(String typeId) {
        return typeId != null && ATTACHES.contains(typeId);
    }

    /** "java", "python", "node", "go", or {@code null} for a type this plugin does not know. */
    public static String debuggerType(String typeId) {
        return typeId == null ? null : LAUNCHES.get(typeId);
    }

    /** The launch the rules see for a configuration of this type. */
    public static LaunchRules.Launch launch(String typeId, String name, String program, java.util.List<String> args,
                                            String cwd, Map<String, String> env) {
        return new LaunchRules.Launch(name, isAttach(typeId), program, args, cwd, debuggerType(typeId), env);
    }
}
