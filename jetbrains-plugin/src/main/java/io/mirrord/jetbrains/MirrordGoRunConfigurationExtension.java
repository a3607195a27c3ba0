package io.mirrord.jetbrains;

import com.goide.execution.GoRunConfigurationBase;
import com.goide.execution.GoRunningState;
import com.goide.execution.extension.GoRunConfigurationExtension;
import com.intellij.execution.ExecutionException;
import com.intellij.execution.configurations.RunnerSettings;
import com.intellij.execution.target.TargetedCommandLineBuilder;
import io.mirrord.jetbrains.core.LaunchRules;
import io.mirrord.jetbrains.core.RunConfigurations;
import java.util.List;
import org.jetbrains.annotations.NotNull;

/**
 * mirrord for Go application and test run configurations (optional module
 * {@code mirrord-go.xml}): the program's command line gets the session's environment, the
 * {@code go build} step does not. Every decision is the core's.
 */
public final class MirrordGoRunConfigurationExtension extends GoRunConfigurationExtension {
    @Override
    public boolean isApplicableFor(@NotNull GoRunConfigurationBase<?> configuration) {
        return RunConfigurations.isSupported(configuration.getType().getId());
    }

    @Override
    public boolean isEnabledFor(@NotNull GoRunConfigurationBase<?> configuration, RunnerSettings runnerSettings) {
        return true;
    }

    @Override
    protected void patchCommandLine(@NotNull GoRunConfigurationBase<?> configuration, RunnerSettings runnerSettings,
                                    @NotNull TargetedCommandLineBuilder cmdLine, @NotNull String runnerId,
                                    @NotNull GoRunningState<? extends GoRunConfigurationBase<?>> state,
                                    @NotNull GoRunningState.CommandLineType commandLineType) throws ExecutionException {
        if (commandLineType != GoRunningState.CommandLineType.RUN) {
            return;
        }
        LaunchRules.Launch launch = RunConfigurations.launch(configuration.getType().getId(), configuration.getName(), null,
                List.of(), configuration.getWorkingDirectory(), configuration.getCustomEnvironment());
        LaunchRules.LaunchEnvironment le = MirrordLaunches.prepare(configuration.getProject(), launch);
        if (le == null) {
            return;
        }
        le.unset().forEach(cmdLine::removeEnvironmentVariable);
        le.env().forEach(cmdLine::addEnvironmentVariable);
    }
}
