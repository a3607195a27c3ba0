package io.mirrord.jetbrains;

import com.intellij.ide.plugins.PluginManagerCore;
import com.intellij.openapi.application.ApplicationManager;
import com.intellij.openapi.application.PathManager;
import com.intellij.openapi.components.PersistentStateComponent;
import com.intellij.openapi.components.State;
import com.intellij.openapi.components.Storage;
import com.intellij.openapi.extensions.PluginId;
import com.intellij.ide.plugins.IdeaPluginDescriptor;
import io.mirrord.jetbrains.core.Daemon;
import io.mirrord.jetbrains.core.MirrordException;
import io.mirrord.jetbrains.core.ServerLocator;
import java.nio.file.Path;
import java.util.Map;
import org.jetbrains.annotations.NotNull;

/**
 * Application settings (where mirrord-server is, its log level), kept by the IDE; which binary
 * to start and with which arguments is {@link ServerLocator}'s decision.
 */
@State(name = "MirrordAppSettings", storages = @Storage("mirrord.xml"))
public final class MirrordAppSettings implements PersistentStateComponent<MirrordAppSettings.Data> {
    public static final String PLUGIN_ID = "io.mirrord.jetbrains";

    /** The persisted fields (public for the IDE's XML serializer). */
    public static final class Data {
        public String serverPath = "";
        public String logLevel = "info";
    }

    private Data data = new Data();

    public static MirrordAppSettings getInstance() {
        return ApplicationManager.getApplication().getService(MirrordAppSettings.class);
    }

    @Override
    public @NotNull Data getState() {
        return data;
    }

    @Override
    public void loadState(@NotNull Data state) {
        data = state;
    }

    /** The daemon's command for this IDE, or a message saying why there is none. */
    public Daemon.Command daemonCommand() throws MirrordException {
        IdeaPluginDescriptor plugin = PluginManagerCore.getPlugin(PluginId.getId(PLUGIN_ID));
        Path pluginDir = plugin == null ? null : plugin.getPluginPath();
        ServerLocator.Location location = ServerLocator.resolve(data.serverPath, System.getenv("PATH"), pluginDir,
                System.getProperty("user.home"), ServerLocator::isExecutable);
        if (location == null) {
            throw new MirrordException("mirrord-server was not found: set its path in Settings | Tools | mirrord, "
                    + "or put mirrord-server on PATH");
        }
        Path log = Path.of(PathManager.getLogPath(), "mirrord-server.log");
        return ServerLocator.command(location.path(), data.logLevel, log, Map.of());
    }

    /** The {@code mirrord} CLI next to the daemon (for {@code mirrord schema}). */
    public Path cli() throws MirrordException {
        return ServerLocator.cliNextTo(Path.of(daemonCommand().argv().get(0)));
    }
}
