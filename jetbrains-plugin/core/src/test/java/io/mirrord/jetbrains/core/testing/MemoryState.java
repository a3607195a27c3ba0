package io.mirrord.jetbrains.core.testing;

import io.mirrord.jetbrains.core.MirrordService;
import java.util.ArrayList;
import java.util.List;

/** Per-project state kept in memory (the plugin keeps it in the project's workspace file). */
public final class MemoryState implements MirrordService.State {
    private boolean enabled;
    private List<String> recent = new ArrayList<>();

    public MemoryState(boolean enabled) {
        this.enabled = enabled;
    }

    @Override
    public synchronized boolean enabled() {
        return enabled;
    }

    @Override
    public synchronized void setEnabled(boolean on) {
        enabled = on;
    }

    @Override
    public synchronized List<String> recentTargets() {
        return List.copyOf(recent);
    }

    @Override
    public synchronized void setRecentTargets(List<String> r) {
        recent = new ArrayList<>(r);
    }
}
