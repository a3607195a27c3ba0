package io.mirrord.jetbrains.core;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * mirrord's configuration files: which files are ones (the JSON Schema mapping covers them), the
 * file "create configuration" writes, and the schema itself from {@code mirrord schema}.
 */
public final class ConfigFiles {
    public static final String DEFAULT_CONFIG = """
            {
              "feature": {
                "network": {
                  "incoming": "steal",
                  "outgoing": true,
                  "dns": true
                }
              }
            }
            """;

    /** Largest schema accepted from {@code mirrord schema}. */
    private static final int MAX_SCHEMA = 4 << 20;

    private ConfigFiles() {}

    /** {@code .mirrord/*.json} and {@code *mirrord.json} (what the VS Code extension covers). */
    public static boolean isConfigFile(String fileName, String parentDirName) {
        return (".mirrord".equals(parentDirName) && fileName.endsWith(".json")) || fileName.endsWith("mirrord.json");
    }

    public static Path defaultConfigPath(Path projectDir) {
        return projectDir.resolve(".mirrord").resolve("mirrord.json");
    }

    /** Runs {@code <cli> schema} (argv, no shell) and returns the JSON Schema it prints. */
    public static String schema(Path cli) throws MirrordException {
        Process p;
        try {
            p = new ProcessBuilder(List.of(cli.toString(), "schema")).redirectErrorStream(false).start();
        } catch (IOException e) {
            throw new MirrordException("`" + cli + " schema` could not run: " + e.getMessage(), e);
        }
        try (InputStream in = p.getInputStream()) {
            p.getOutputStream().close();
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buf = new byte[8192];
            int n;
            while ((n = in.read(buf)) > 0) {
                if (out.size() + n > MAX_SCHEMA) {
                    p.destroyForcibly();
                    throw new MirrordException("`" + cli + " schema` printed more than " + MAX_SCHEMA + " bytes");
                }
                out.write(buf, 0, n);
            }
            if (!p.waitFor(10, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                throw new MirrordException("`" + cli + " schema` did not finish");
            }
            if (p.exitValue() != 0) {
                String err = new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8).trim();
                throw new MirrordException("`" + cli + " schema` failed (exit " + p.exitValue() + "): " + err);
            }
            String schema = out.toString(StandardCharsets.UTF_8);
            if (!schema.trim().startsWith("{")) {
                throw new MirrordException("`" + cli + " schema` did not print a JSON object");
            }
            return schema;
        } catch (IOException e) {
            throw new MirrordException("reading `" + cli + " schema`: " + e.getMessage(), e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new MirrordException("interrupted while running `" + cli + " schema`");
        }
    }
}
