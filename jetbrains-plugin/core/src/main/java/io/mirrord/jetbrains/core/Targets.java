package io.mirrord.jetbrains.core;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The target picker's list ({@code vscode-extension/src/logic/targets.ts}): the recently used
 * targets that the daemon still lists, most recent first, then the others in the daemon's order.
 */
public final class Targets {
    /** How many targets the picker remembers per project. */
    public static final int MAX_RECENT = 10;

    private Targets() {}

    /**
     * One line of the picker.
     *
     * @param description "most recent", "recent", "not available", or a combination; may be empty
     */
    public record Item(String target, String description, boolean recent, boolean available) {
        public String label() {
            return description.isEmpty() ? target : target + "  (" + description + ")";
        }
    }

    /** {@code target} moved to the front of the recent list (no duplicates, at most {@code max}). */
    public static List<String> remember(List<String> recent, String target, int max) {
        List<String> out = new ArrayList<>();
        out.add(target);
        for (String r : recent) {
            if (!r.equals(target) && out.size() < max) {
                out.add(r);
            }
        }
        return out;
    }

    public static List<String> remember(List<String> recent, String target) {
        return remember(recent, target, MAX_RECENT);
    }

    public static List<Item> order(List<Api.TargetInfo> targets, List<String> recent) {
        Map<String, Api.TargetInfo> byPath = new LinkedHashMap<>();
        for (Api.TargetInfo t : targets) {
            byPath.putIfAbsent(t.path(), t);
        }
        List<Item> items = new ArrayList<>();
        Set<String> seen = new HashSet<>();
        for (String r : recent) {
            Api.TargetInfo t = byPath.get(r);
            if (t == null || !seen.add(r)) {
                continue;
            }
            String first = items.isEmpty() ? "most recent" : "recent";
            items.add(new Item(t.path(), join(first, t.available() ? null : "not available"), true, t.available()));
        }
        for (Api.TargetInfo t : targets) {
            if (!seen.add(t.path())) {
                continue;
            }
            items.add(new Item(t.path(), join(null, t.available() ? null : "not available"), false, t.available()));
        }
        return items;
    }

    private static String join(String a, String b) {
        if (a == null) {
            return b == null ? "" : b;
        }
        return b == null ? a : a + ", " + b;
    }
}
