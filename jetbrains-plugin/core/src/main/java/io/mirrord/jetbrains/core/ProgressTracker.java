package io.mirrord.jetbrains.core;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * LSP work-done progress from the daemon ({@code window/workDoneProgress/create} then
 * {@code $/progress} begin/report/end), turned into calls the IDE's progress bar understands.
 * Only tokens the daemon created are followed, as LSP requires.
 */
public final class ProgressTracker {
    /** Where progress goes (the platform shows it in the IDE's progress bar). */
    public interface Listener {
        void begin(String token, String title);

        void report(String token, String message);

        void end(String token, String message);
    }

    /** An active progress: its title and last message. */
    public record Task(String token, String title, String message) {}

    private final Listener listener;
    /** token → task; {@code null} value = created, not begun yet. Guarded by {@code this}. */
    private final Map<String, Task> tasks = new LinkedHashMap<>();

    public ProgressTracker(Listener listener) {
        this.listener = listener;
    }

    /** {@code window/workDoneProgress/create}: accept the token. */
    public synchronized void create(JsonElement params) {
        String token = token(params);
        if (token != null) {
            tasks.put(token, null);
        }
    }

    /** A {@code $/progress} notification. Unknown tokens are ignored. */
    public void progress(JsonElement params) {
        String token = token(params);
        JsonObject value = params instanceof JsonObject o ? Json.obj(o, "value") : null;
        if (token == null || value == null) {
            return;
        }
        String kind = Json.str(value, "kind", "");
        String title;
        String message = Json.str(value, "message", "");
        synchronized (this) {
            if (!tasks.containsKey(token)) {
                return;
            }
            Task current = tasks.get(token);
            switch (kind) {
                case "begin" -> {
                    title = Json.str(value, "title", "mirrord");
                    tasks.put(token, new Task(token, title, message));
                }
                case "report" -> {
                    if (current == null) {
                        return;
                    }
                    title = current.title();
                    tasks.put(token, new Task(token, title, message));
                }
                case "end" -> {
                    tasks.remove(token);
                    title = current == null ? "" : current.title();
                }
                default -> {
                    return;
                }
            }
        }
        switch (kind) {
            case "begin" -> listener.begin(token, title);
            case "report" -> listener.report(token, message);
            default -> listener.end(token, message);
        }
    }

    /** The daemon died: every active progress ends with {@code reason}. */
    public void abandonAll(String reason) {
        Map<String, Task> active;
        synchronized (this) {
            active = new LinkedHashMap<>(tasks);
            tasks.clear();
        }
        for (Map.Entry<String, Task> e : active.entrySet()) {
            if (e.getValue() != null) {
                listener.end(e.getKey(), reason);
            }
        }
    }

    /** Progress that has begun and not ended. */
    public synchronized java.util.List<Task> active() {
        return tasks.values().stream().filter(t -> t != null).toList();
    }

    private static String token(JsonElement params) {
        if (params instanceof JsonObject o && o.get("token") != null && !o.get("token").isJsonNull()) {
            return Json.text(o.get("token"));
        }
        return null;
    }
}
