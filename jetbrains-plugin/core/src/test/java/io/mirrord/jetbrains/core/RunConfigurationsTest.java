package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.Test;

class RunConfigurationsTest {
    @Test
    void javaKotlinJunitPythonNodeAndGoLaunchesAreSupported() {
        for (String id : List.of("Application", "JetRunConfigurationType", "JUnit", "PythonConfigurationType",
                "NodeJSConfigurationType", "GoApplicationRunConfiguration", "GoTestRunConfiguration")) {
            assertTrue(RunConfigurations.isSupported(id), id);
            assertFalse(RunConfigurations.isAttach(id), id);
        }
        assertEquals("java", RunConfigurations.debuggerType("JUnit"));
        assertEquals("python", RunConfigurations.debuggerType("PythonConfigurationType"));
        assertEquals("node", RunConfigurations.debuggerType("NodeJSConfigurationType"));
        assertEquals("go", RunConfigurations.debuggerType("GoTestRunConfiguration"));
        assertFalse(RunConfigurations.isSupported("CargoCommandRunConfiguration"));
        assertFalse(RunConfigurations.isSupported(null));
        assertNull(RunConfigurations.debuggerType("Unknown"));
    }

    @Test
    void attachConfigurationsAreKnownAndSkippedByTheRules() {
        assertTrue(RunConfigurations.isAttach("Remote"));
        LaunchRules.Launch remote = RunConfigurations.launch("Remote", "remote jvm", null, List.of(), null, Map.of("MIRRORD_ACTIVE", "1"));
        assertEquals(LaunchRules.Reason.ATTACH, LaunchRules.decide(remote, true).reason());
        LaunchRules.Launch app = RunConfigurations.launch("Application", "app", "Main", List.of("a"), "/ws", Map.of());
        assertEquals(LaunchRules.Reason.ENABLED, LaunchRules.decide(app, true).reason());
        assertEquals("java", app.debuggerType());
    }

    @Test
    void aWholeEnvironmentIsNeededOnlyToRemoveAnInheritedVariable() {
        LaunchRules.LaunchEnvironment le = new LaunchRules.LaunchEnvironment(Map.of("A", "1"), Set.of("MIRRORD_ACTIVE"));
        assertTrue(LaunchRules.needsFullEnvironment(Map.of("MIRRORD_ACTIVE", "1", "PATH", "/bin"), le));
        assertFalse(LaunchRules.needsFullEnvironment(Map.of("PATH", "/bin"), le));
        assertFalse(LaunchRules.needsFullEnvironment(null, le));
    }
}
