package io.mirrord.jetbrains;

import com.intellij.openapi.components.PersistentStateComponent;
import com.intellij.openapi.components.State;
import com.intellij.openapi.components.Storage;
import com.intellij.openapi.components.StoragePathMacros;
import com.intellij.openapi.project.Project;
import io.mirrord.jetbrains.core.MirrordService;
import java.util.ArrayList;
import java.util.List;
import org.jetbrains.annotations.NotNull;

/** The toggle and the recent targets of a project, kept in its workspace file (not shared). */
@State(name = "MirrordProjectState", storages = @Storage(StoragePathMacros.WORKSPACE_FILE))
public final class MirrordProjectState implements PersistentStateComponent<MirrordProjectState.Data>, MirrordService.State {
    /** The persisted fields (public for the IDE's XML serializer). */
    public static final class Data {
        public boolean enabled = false;
        public List<String> recentTargets = new ArrayList<>();
    }

    private Data data = new Data();

    public static MirrordProjectState getInstance(Project project) {
        return project.getService(MirrordProjectState.class);
    }

    @Override
    public synchronized @NotNull Data getState() {
        return data;
    }

    @Override
    public synchronized void loadState(@NotNull Data state) {
        data = state;
    }

    @Override
    public synchronized boolean enabled() {
        return data.enabled;
    }

    @Override
    public synchronized void setEnabled(boolean on) {
        data.enabled = on;
    }

    @Override
    public synchronized List<String> recentTargets() {
        return List.copyOf(data.recentTargets);
    }

    @Override
    public synchronized void setRecentTargets(List<String> recent) {
        data.recentTargets = new ArrayList<>(recent);
    }
}
