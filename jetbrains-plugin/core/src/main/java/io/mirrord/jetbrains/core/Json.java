package io.mirrord.jetbrains.core;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonPrimitive;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The one Gson instance of the plugin and tolerant readers for the daemon's JSON: a field that
 * is missing or of another type reads as the given default, so a newer daemon that adds or
 * changes a field never breaks the view.
 */
public final class Json {
    /** Nulls are left out: the daemon's optional fields are {@code Option}s that skip null. */
    public static final Gson GSON = new GsonBuilder().disableHtmlEscaping().create();
    /**
     * For whole JSON-RPC messages, whose params were already made trees by {@link #GSON}: a
     * {@code "result": null} must be written, not dropped.
     */
    public static final Gson WIRE = new GsonBuilder().disableHtmlEscaping().serializeNulls().create();

    private Json() {}

    public static JsonElement toTree(Object value) {
        return GSON.toJsonTree(value);
    }

    public static <T> T fromTree(JsonElement tree, Class<T> type) {
        return GSON.fromJson(tree, type);
    }

    public static String str(JsonObject o, String key, String fallback) {
        JsonElement e = o == null ? null : o.get(key);
        if (e instanceof JsonPrimitive p) {
            return p.getAsString();
        }
        return fallback;
    }

    /** The field as text whatever its JSON type (strings unquoted, others as JSON). */
    public static String text(JsonElement e) {
        if (e == null || e.isJsonNull()) {
            return "";
        }
        if (e instanceof JsonPrimitive p && p.isString()) {
            return p.getAsString();
        }
        return GSON.toJson(e);
    }

    public static long num(JsonObject o, String key, long fallback) {
        JsonElement e = o == null ? null : o.get(key);
        if (e instanceof JsonPrimitive p && p.isNumber()) {
            return p.getAsLong();
        }
        return fallback;
    }

    public static boolean bool(JsonObject o, String key, boolean fallback) {
        JsonElement e = o == null ? null : o.get(key);
        if (e instanceof JsonPrimitive p && p.isBoolean()) {
            return p.getAsBoolean();
        }
        return fallback;
    }

    public static JsonObject obj(JsonObject o, String key) {
        JsonElement e = o == null ? null : o.get(key);
        return e instanceof JsonObject j ? j : null;
    }

    public static List<String> strings(JsonObject o, String key) {
        List<String> out = new ArrayList<>();
        JsonElement e = o == null ? null : o.get(key);
        if (e instanceof JsonArray a) {
            for (JsonElement item : a) {
                out.add(text(item));
            }
        }
        return out;
    }

    /** A JSON object of strings (e.g. headers) as an ordered map; non-string values as JSON. */
    public static Map<String, String> stringMap(JsonObject o, String key) {
        Map<String, String> out = new LinkedHashMap<>();
        JsonObject m = obj(o, key);
        if (m != null) {
            for (Map.Entry<String, JsonElement> e : m.entrySet()) {
                out.put(e.getKey(), text(e.getValue()));
            }
        }
        return out;
    }
}
