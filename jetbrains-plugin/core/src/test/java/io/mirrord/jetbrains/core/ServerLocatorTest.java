package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.Test;

class ServerLocatorTest {
    private static final Set<Path> EXECUTABLES = Set.of(Path.of("/opt/b/mirrord-server"), Path.of("/plugin/bin/mirrord-server"));

    @Test
    void theSettingWinsThenPathThenTheBundledBinary() {
        assertEquals(new ServerLocator.Location(Path.of("/home/u/bin/mirrord-server"), ServerLocator.Source.SETTING),
                ServerLocator.resolve(" ~/bin/mirrord-server ", "/opt/b", Path.of("/plugin"), "/home/u", EXECUTABLES::contains));
        assertEquals(new ServerLocator.Location(Path.of("/opt/b/mirrord-server"), ServerLocator.Source.PATH),
                ServerLocator.resolve("", "/opt/a::/opt/b", Path.of("/plugin"), "/home/u", EXECUTABLES::contains));
        assertEquals(new ServerLocator.Location(Path.of("/plugin/bin/mirrord-server"), ServerLocator.Source.BUNDLED),
                ServerLocator.resolve(null, "/opt/a", Path.of("/plugin"), "/home/u", EXECUTABLES::contains));
        assertNull(ServerLocator.resolve(null, null, null, null, EXECUTABLES::contains));
    }

    @Test
    void theCommandIsAnArgumentVector() {
        Daemon.Command c = ServerLocator.command(Path.of("/x/mirrord-server"), "debug", Path.of("/log/m.log"), Map.of("A", "1"));
        assertEquals(List.of("/x/mirrord-server", "--stdio", "--log-level", "debug", "--log-file", "/log/m.log"), c.argv());
        assertEquals(List.of("/x/mirrord-server", "--stdio"), ServerLocator.command(Path.of("/x/mirrord-server"), " ", null, null).argv());
        assertEquals(Path.of("/x/mirrord"), ServerLocator.cliNextTo(Path.of("/x/mirrord-server")));
    }
}
