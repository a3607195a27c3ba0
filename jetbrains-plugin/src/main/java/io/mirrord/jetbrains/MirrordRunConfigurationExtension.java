package io.mirrord.jetbrains;

import com.intellij.execution.ExecutionException;
import com.intellij.execution.RunConfigurationExtension;
import com.intellij.execution.configurations.JavaParameters;
import com.intellij.execution.configurations.RunConfigurationBase;
import com.intellij.execution.configurations.RunnerSettings;
import io.mirrord.jetbrains.core.LaunchRules;
import io.mirrord.jetbrains.core.RunConfigurations;
import java.util.HashMap;
import java.util.Map;
import org.jetbrains.annotations.NotNull;

/**
 * mirrord for Java and Kotlin application and JUnit run configurations: the JVM the IDE starts
 * gets the session's environment. Which configurations apply is {@link RunConfigurations}'
 * decision, whether mirrord runs and the environment are {@link LaunchRules}' (through
 * {@link MirrordLaunches}).
 */
public final class MirrordRunConfigurationExtension extends RunConfigurationExtension {
    @Override
    public boolean isApplicableFor(@NotNull RunConfigurationBase<?> configuration) {
        return RunConfigurations.isSupported(configuration.getType().getId());
    }

    @Override
    public <T extends RunConfigurationBase<?>> void updateJavaParameters(
            @NotNull T configuration, @NotNull JavaParameters params, RunnerSettings runnerSettings) throws ExecutionException {
        String program = params.getMainClass() != null ? params.getMainClass() : params.getJarPath();
        LaunchRules.Launch launch = RunConfigurations.launch(configuration.getType().getId(), configuration.getName(), program,
                params.getProgramParametersList().getList(), params.getWorkingDirectory(), params.getEnv());
        LaunchRules.LaunchEnvironment le = MirrordLaunches.prepare(configuration.getProject(), launch);
        if (le == null) {
            return;
        }
        if (params.isPassParentEnvs() && MirrordLaunches.needsWholeEnvironment(le)) {
            params.setPassParentEnvs(false);
            params.setEnv(MirrordLaunches.wholeEnvironment(le));
        } else {
            Map<String, String> env = new HashMap<>(params.getEnv());
            le.unset().forEach(env::remove);
            env.putAll(le.env());
            params.setEnv(env);
        }
    }
}
