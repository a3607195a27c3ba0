package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

class ConfigFilesTest {
    @Test
    void recognisesConfigurationFiles() {
        assertTrue(ConfigFiles.isConfigFile("mirrord.json", ".mirrord"));
        assertTrue(ConfigFiles.isConfigFile("staging.json", ".mirrord"));
        assertTrue(ConfigFiles.isConfigFile("api.mirrord.json", "config"));
        assertFalse(ConfigFiles.isConfigFile("package.json", "web"));
        assertFalse(ConfigFiles.isConfigFile("mirrord.toml", ".mirrord"));
        assertEquals(Path.of("/p/.mirrord/mirrord.json"), ConfigFiles.defaultConfigPath(Path.of("/p")));
        JsonObject def = JsonParser.parseString(ConfigFiles.DEFAULT_CONFIG).getAsJsonObject();
        assertEquals("steal", def.getAsJsonObject("feature").getAsJsonObject("network").get("incoming").getAsString());
    }

    /** The real CLI of this build (test.sh passes its path as {@code -Dmirrord.cli=...}). */
    @Test
    void theSchemaComesFromTheCli() throws Exception {
        String cli = System.getProperty("mirrord.cli");
        if (cli == null) {
            throw new AssertionError("-Dmirrord.cli is not set: run jetbrains-plugin/scripts/test.sh");
        }
        JsonObject schema = JsonParser.parseString(ConfigFiles.schema(Path.of(cli))).getAsJsonObject();
        JsonObject props = schema.getAsJsonObject("properties");
        assertTrue(props.has("feature") && props.has("target"), props.keySet().toString());
        MirrordException e = assertThrows(MirrordException.class, () -> ConfigFiles.schema(Path.of("/nonexistent/mirrord")));
        assertTrue(e.getMessage().contains("/nonexistent/mirrord"), e.getMessage());
        MirrordException notSchema = assertThrows(MirrordException.class, () -> ConfigFiles.schema(Path.of("/bin/false")));
        assertTrue(notSchema.getMessage().contains("failed (exit 1)"), notSchema.getMessage());
    }
}
