package io.mirrord.jetbrains.core;

import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.function.Predicate;

/**
 * Where mirrord-server is and how it is started ({@code vscode-extension/src/logic/serverPath.ts}):
 * the plugin's setting, else {@code PATH}, else the plugin's own {@code bin/}.
 */
public final class ServerLocator {
    public static final String SERVER_BINARY = "mirrord-server";

    private ServerLocator() {}

    public enum Source { SETTING, PATH, BUNDLED }

    public record Location(Path path, Source source) {}

    /**
     * The binary to start, or {@code null}. A setting naming a missing file is still returned:
     * starting it then fails with a message naming that path, which is what the user asked for.
     */
    public static Location resolve(String setting, String pathEnv, Path pluginDir, String home, Predicate<Path> isExecutable) {
        if (setting != null && !setting.isBlank()) {
            String s = setting.trim();
            if (home != null && (s.equals("~") || s.startsWith("~/"))) {
                s = home + s.substring(1);
            }
            return new Location(Path.of(s), Source.SETTING);
        }
        for (String dir : (pathEnv == null ? "" : pathEnv).split(File.pathSeparator)) {
            if (dir.isEmpty()) {
                continue;
            }
            Path candidate = Path.of(dir, SERVER_BINARY);
            if (isExecutable.test(candidate)) {
                return new Location(candidate, Source.PATH);
            }
        }
        if (pluginDir != null) {
            Path bundled = pluginDir.resolve("bin").resolve(SERVER_BINARY);
            if (isExecutable.test(bundled)) {
                return new Location(bundled, Source.BUNDLED);
            }
        }
        return null;
    }

    public static boolean isExecutable(Path p) {
        return Files.isRegularFile(p) && Files.isExecutable(p);
    }

    /** The daemon's command: stdio transport, log level and log file when given. */
    public static Daemon.Command command(Path server, String logLevel, Path logFile, Map<String, String> env) {
        List<String> argv = new ArrayList<>();
        argv.add(server.toString());
        argv.add("--stdio");
        if (logLevel != null && !logLevel.isBlank()) {
            argv.add("--log-level");
            argv.add(logLevel.trim());
        }
        if (logFile != null) {
            argv.add("--log-file");
            argv.add(logFile.toString());
        }
        return new Daemon.Command(List.copyOf(argv), env == null ? Map.of() : Map.copyOf(env));
    }

    /** {@code mirrord} (the CLI, for {@code mirrord schema}) next to mirrord-server. */
    public static Path cliNextTo(Path server) {
        Path dir = server.getParent();
        return dir == null ? Path.of("mirrord") : dir.resolve("mirrord");
    }
}
