package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.mirrord.jetbrains.core.LaunchRules.Launch;
import io.mirrord.jetbrains.core.LaunchRules.Reason;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class LaunchRulesTest {
    private static Launch launch(Map<String, String> env) {
        return new Launch("app", false, "/usr/bin/java", List.of("-cp", "out", "Main"), null, "java", env);
    }

    @Test
    void attachConfigurationsAreNeverTouched() {
        Launch attach = new Launch("remote", true, null, null, null, "java", Map.of("MIRRORD_ACTIVE", "1"));
        assertEquals(new LaunchRules.Decision(false, Reason.ATTACH), LaunchRules.decide(attach, true));
    }

    @Test
    void mirrordActiveInTheEnvWinsOverTheToggle() {
        for (String on : List.of("1", "true", " TRUE ", "yes", "on")) {
            assertEquals(new LaunchRules.Decision(true, Reason.FORCED_ON), LaunchRules.decide(launch(Map.of("MIRRORD_ACTIVE", on)), false), on);
        }
        for (String off : List.of("0", "false", "No", "off")) {
            assertEquals(new LaunchRules.Decision(false, Reason.FORCED_OFF), LaunchRules.decide(launch(Map.of("MIRRORD_ACTIVE", off)), true), off);
        }
        // Unreadable values do not decide: the toggle does.
        assertEquals(Reason.ENABLED, LaunchRules.decide(launch(Map.of("MIRRORD_ACTIVE", "maybe")), true).reason());
        assertNull(LaunchRules.mirrordActiveOverride(Map.of("MIRRORD_ACTIVE", "")));
        assertNull(LaunchRules.mirrordActiveOverride(null));
    }

    @Test
    void otherwiseTheToggleDecides() {
        assertEquals(new LaunchRules.Decision(true, Reason.ENABLED), LaunchRules.decide(launch(Map.of()), true));
        assertEquals(new LaunchRules.Decision(false, Reason.DISABLED), LaunchRules.decide(launch(Map.of()), false));
    }

    @Test
    void aConfigurationThatAlreadyCarriesASessionIsLeftAlone() {
        assertEquals(Reason.ALREADY, LaunchRules.decide(launch(Map.of("MIRRORD_SESSION", "abc", "MIRRORD_ACTIVE", "1")), true).reason());
        assertEquals(Reason.ENABLED, LaunchRules.decide(launch(Map.of("MIRRORD_SESSION", "")), true).reason());
    }

    @Test
    void nullEnvValuesAreDropped() {
        Map<String, String> env = new HashMap<>();
        env.put("A", null);
        env.put("B", "2");
        assertEquals(Map.of("B", "2"), launch(env).env());
    }

    @Test
    void startSessionParamsCarryTheLaunch() {
        Launch l = new Launch("app", false, "/usr/bin/python3", List.of("app.py"), "", "python", Map.of("MIRRORD_CONFIG_FILE", "x.json"));
        Api.StartSessionParams p = LaunchRules.startSessionParams("/ws", l, "pid/7");
        assertEquals("/ws", p.workspaceFolder());
        assertEquals("pid/7", p.target());
        assertNull(p.configPath());
        assertEquals("/usr/bin/python3", p.launch().program());
        assertEquals(List.of("app.py"), p.launch().args());
        assertEquals("/ws", p.launch().cwd(), "cwd defaults to the project");
        assertEquals("python", p.launch().debuggerType());
        assertEquals(Map.of("MIRRORD_CONFIG_FILE", "x.json"), p.launch().env());
        assertNull(LaunchRules.startSessionParams("/ws", l, "").target());
        assertEquals("{\"workspaceFolder\":\"/ws\",\"target\":\"pid/7\",\"launch\":{\"program\":\"/usr/bin/python3\","
                + "\"args\":[\"app.py\"],\"cwd\":\"/ws\",\"debuggerType\":\"python\",\"env\":{\"MIRRORD_CONFIG_FILE\":\"x.json\"}}}",
                Json.GSON.toJson(p));
    }

    @Test
    void argsStringsAreSplitAtWhitespace() {
        assertEquals(List.of("a", "b", "c"), LaunchRules.splitArgs("  a b\tc "));
        assertEquals(List.of(), LaunchRules.splitArgs("   "));
        assertEquals(List.of(), LaunchRules.splitArgs(null));
    }

    @Test
    void preloadKeepsTheLaunchsOwnEntriesInFront() {
        assertEquals(List.of("/a.so", "/b.so"), LaunchRules.preloadEntries(" /a.so: /b.so "));
        assertEquals("/a.so:/layer.so", LaunchRules.mergePreload("/a.so", "/layer.so"));
        assertEquals("/a.so:/layer.so", LaunchRules.mergePreload("/a.so /layer.so", "/a.so:/layer.so"));
        assertEquals("/layer.so", LaunchRules.mergePreload(null, "/layer.so"));
    }

    @Test
    void theSessionsEnvOverridesAndEnvToUnsetIsRemoved() {
        Map<String, String> launchEnv = Map.of("KEEP", "1", "MIRRORD_ACTIVE", "1", "MIRRORD_CONFIG_FILE", "c.json",
                "LD_PRELOAD", "/a.so", "MIRRORD_SESSION", "old");
        Api.StartSessionResult result = new Api.StartSessionResult("s1",
                Map.of("MIRRORD_SESSION", "s1", "LD_PRELOAD", "/layer.so", "MIRRORD_PROXY_ADDR", "unix:/run/s1.sock"),
                List.of("MIRRORD_ACTIVE", "MIRRORD_CONFIG_FILE", "INHERITED_ONLY"));
        LaunchRules.LaunchEnvironment le = LaunchRules.applySession(launchEnv, result);
        assertEquals(Map.of("KEEP", "1", "MIRRORD_SESSION", "s1", "LD_PRELOAD", "/a.so:/layer.so",
                "MIRRORD_PROXY_ADDR", "unix:/run/s1.sock"), le.env());
        assertEquals(java.util.Set.of("MIRRORD_ACTIVE", "MIRRORD_CONFIG_FILE", "INHERITED_ONLY"), le.unset());

        // The process's whole environment: the IDE's minus unset, plus the launch's.
        Map<String, String> ide = Map.of("PATH", "/usr/bin", "MIRRORD_ACTIVE", "1", "INHERITED_ONLY", "x", "KEEP", "0");
        Map<String, String> proc = LaunchRules.processEnvironment(ide, le);
        assertEquals("/usr/bin", proc.get("PATH"));
        assertEquals("1", proc.get("KEEP"));
        assertFalse(proc.containsKey("MIRRORD_ACTIVE"));
        assertFalse(proc.containsKey("INHERITED_ONLY"));
        assertEquals("s1", proc.get("MIRRORD_SESSION"));
    }

    @Test
    void aVariableTheSessionSetsIsNeverAlsoUnset() {
        Api.StartSessionResult result = new Api.StartSessionResult("s1", Map.of("X", "1"), List.of("X"));
        LaunchRules.LaunchEnvironment le = LaunchRules.applySession(Map.of(), result);
        assertEquals("1", le.env().get("X"));
        assertTrue(le.unset().isEmpty());
    }
}
