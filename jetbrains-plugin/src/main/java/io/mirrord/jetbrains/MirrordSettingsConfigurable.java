package io.mirrord.jetbrains;

import com.intellij.openapi.options.Configurable;
import com.intellij.openapi.ui.ComboBox;
import com.intellij.ui.components.JBTextField;
import com.intellij.util.ui.FormBuilder;
import io.mirrord.jetbrains.core.ServerLocator;
import java.nio.file.Path;
import javax.swing.JComponent;
import javax.swing.JLabel;
import org.jetbrains.annotations.Nls;
import org.jetbrains.annotations.Nullable;

/**
 * Settings | Tools | mirrord: the mirrord-server path (empty: {@link ServerLocator} looks on PATH,
 * then in the plugin) and its log level. A changed path is used by projects opened afterwards.
 */
public final class MirrordSettingsConfigurable implements Configurable {
    private final JBTextField serverPath = new JBTextField();
    private final ComboBox<String> logLevel = new ComboBox<>(new String[] {"error", "warn", "info", "debug", "trace"});
    private final JLabel resolved = new JLabel();

    @Override
    public @Nls String getDisplayName() {
        return "mirrord";
    }

    @Override
    public @Nullable JComponent createComponent() {
        return FormBuilder.createFormBuilder()
                .addLabeledComponent("mirrord-server path (empty: PATH, then the plugin's own):", serverPath)
                .addLabeledComponent("Log level:", logLevel)
                .addComponent(resolved)
                .getPanel();
    }

    @Override
    public boolean isModified() {
        MirrordAppSettings.Data d = MirrordAppSettings.getInstance().getState();
        return !serverPath.getText().trim().equals(d.serverPath) || !String.valueOf(logLevel.getSelectedItem()).equals(d.logLevel);
    }

    @Override
    public void apply() {
        MirrordAppSettings.Data d = MirrordAppSettings.getInstance().getState();
        d.serverPath = serverPath.getText().trim();
        d.logLevel = String.valueOf(logLevel.getSelectedItem());
        reset();
    }

    @Override
    public void reset() {
        MirrordAppSettings.Data d = MirrordAppSettings.getInstance().getState();
        serverPath.setText(d.serverPath);
        logLevel.setSelectedItem(d.logLevel);
        ServerLocator.Location where = ServerLocator.resolve(d.serverPath, System.getenv("PATH"), null,
                System.getProperty("user.home"), ServerLocator::isExecutable);
        Path path = where == null ? null : where.path();
        resolved.setText(path == null ? "mirrord-server: not found" : "mirrord-server: " + path + " (" + where.source() + ")");
    }
}
