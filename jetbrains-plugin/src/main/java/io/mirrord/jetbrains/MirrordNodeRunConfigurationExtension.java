package io.mirrord.jetbrains;

import com.intellij.execution.runners.ExecutionEnvironment;
import com.intellij.javascript.nodejs.execution.AbstractNodeTargetRunProfile;
import com.intellij.javascript.nodejs.execution.NodeTargetRun;
import com.intellij.javascript.nodejs.execution.runConfiguration.AbstractNodeRunConfigurationExtension;
import com.intellij.javascript.nodejs.execution.runConfiguration.NodeRunConfigurationLaunchSession;
import com.intellij.openapi.options.SettingsEditor;
import com.jetbrains.nodejs.run.NodeJsRunConfiguration;
import io.mirrord.jetbrains.core.LaunchRules;
import io.mirrord.jetbrains.core.RunConfigurations;
import java.util.Map;
import org.jetbrains.annotations.NotNull;
import org.jetbrains.annotations.Nullable;

/**
 * mirrord for Node.js run configurations (optional module {@code mirrord-nodejs.xml}). The
 * session's variables go to this launch's command line only (never into the saved run
 * configuration); every decision is the core's.
 */
public final class MirrordNodeRunConfigurationExtension extends AbstractNodeRunConfigurationExtension {
    @Override
    public boolean isApplicableFor(@NotNull AbstractNodeTargetRunProfile profile) {
        return RunConfigurations.isSupported(profile.getType().getId());
    }

    @Override
    public <P extends AbstractNodeTargetRunProfile> @Nullable SettingsEditor<P> createEditor(@NotNull P configuration) {
        return null;
    }

    @Override
    public @Nullable String getEditorTitle() {
        return null;
    }

    @Override
    public @Nullable NodeRunConfigurationLaunchSession createLaunchSession(
            @NotNull AbstractNodeTargetRunProfile configuration, @NotNull ExecutionEnvironment environment) {
        Map<String, String> env = Map.of();
        String program = null;
        String args = null;
        String cwd = null;
        if (configuration instanceof NodeJsRunConfiguration node) {
            env = node.getEnvs();
            program = node.getInputPath();
            args = node.getApplicationParameters();
            cwd = node.getWorkingDirectory();
        }
        LaunchRules.Launch launch = RunConfigurations.launch(configuration.getType().getId(), configuration.getName(), program,
                LaunchRules.splitArgs(args), cwd, env);
        // Declared in Kotlin: this override cannot throw ExecutionException, so a failure cancels.
        LaunchRules.LaunchEnvironment le = MirrordLaunches.prepareOrCancel(configuration.getProject(), launch);
        if (le == null) {
            return null;
        }
        return new NodeRunConfigurationLaunchSession() {
            @Override
            public void addNodeOptionsTo(@NotNull NodeTargetRun targetRun) {
                var builder = targetRun.getCommandLineBuilder();
                le.unset().forEach(builder::removeEnvironmentVariable);
                le.env().forEach(builder::addEnvironmentVariable);
            }
        };
    }
}
