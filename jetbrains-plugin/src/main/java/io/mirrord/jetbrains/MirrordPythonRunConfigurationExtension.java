package io.mirrord.jetbrains;

import com.intellij.execution.ExecutionException;
import com.intellij.execution.configurations.GeneralCommandLine;
import com.intellij.execution.configurations.RunnerSettings;
import com.jetbrains.python.run.AbstractPythonRunConfiguration;
import com.jetbrains.python.run.PythonRunConfigurationExtension;
import io.mirrord.jetbrains.core.LaunchRules;
import io.mirrord.jetbrains.core.RunConfigurations;
import org.jetbrains.annotations.NotNull;

/**
 * mirrord for Python run configurations (optional module {@code mirrord-python.xml}): the
 * interpreter's command line gets the session's environment; every decision is the core's.
 */
public final class MirrordPythonRunConfigurationExtension extends PythonRunConfigurationExtension {
    @Override
    protected boolean isApplicableFor(@NotNull AbstractPythonRunConfiguration<?> configuration) {
        return RunConfigurations.isSupported(configuration.getType().getId());
    }

    @Override
    protected boolean isEnabledFor(@NotNull AbstractPythonRunConfiguration<?> configuration, RunnerSettings runnerSettings) {
        return true;
    }

    @Override
    protected void patchCommandLine(@NotNull AbstractPythonRunConfiguration<?> configuration, RunnerSettings runnerSettings,
                                    @NotNull GeneralCommandLine cmdLine, @NotNull String runnerId) throws ExecutionException {
        String cwd = cmdLine.getWorkDirectory() == null ? null : cmdLine.getWorkDirectory().getPath();
        LaunchRules.Launch launch = RunConfigurations.launch(configuration.getType().getId(), configuration.getName(),
                cmdLine.getExePath(), cmdLine.getParametersList().getList(), cwd, cmdLine.getEnvironment());
        LaunchRules.LaunchEnvironment le = MirrordLaunches.prepare(configuration.getProject(), launch);
        if (le == null) {
            return;
        }
        if (MirrordLaunches.needsWholeEnvironment(le)) {
            cmdLine.withParentEnvironmentType(GeneralCommandLine.ParentEnvironmentType.NONE);
            cmdLine.getEnvironment().clear();
            cmdLine.withEnvironment(MirrordLaunches.wholeEnvironment(le));
        } else {
            le.unset().forEach(cmdLine.getEnvironment()::remove);
            cmdLine.withEnvironment(le.env());
        }
    }
}
