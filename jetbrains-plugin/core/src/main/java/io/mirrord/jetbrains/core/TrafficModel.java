package io.mirrord.jetbrains.core;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import java.time.Instant;
import java.time.ZoneId;
import java.time.format.DateTimeFormatter;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CopyOnWriteArrayList;

/**
 * The live traffic table: each {@code TrafficEvent} of a session becomes a {@link Row} (the same
 * rows as the VS Code panel's), the last {@link #limit()} rows of all sessions are kept, oldest
 * first, and {@link Filter} selects what the table shows. Thread-safe: events arrive on the
 * daemon's reader thread, the table reads on the UI thread.
 */
public final class TrafficModel {
    public static final int DEFAULT_LIMIT = 2000;

    /** Table columns, in order. */
    public static final List<String> COLUMNS =
            List.of("Time", "Session", "Type", "Request / connection", "Status", "Mode", "Filter", "Duration");

    public enum Kind { INCOMING, OUTGOING, DNS, PORT, PROCESS, ERROR, OTHER }

    /**
     * One row.
     *
     * @param method the HTTP method of a request row, else ""
     * @param statusCode the HTTP status of a request row (0 = failed or not HTTP)
     * @param details name/value pairs shown for the selected row: a request's port and headers,
     *     else the event's fields
     * @param search lower-cased text the filter box searches
     */
    public record Row(
            long id,
            String sessionId,
            Kind kind,
            long time,
            String timeText,
            String type,
            String summary,
            String method,
            String status,
            int statusCode,
            String mode,
            String filter,
            String duration,
            boolean failed,
            List<Map.Entry<String, String>> details,
            String search) {
        /** The value of column {@code i} of {@link #COLUMNS}. */
        public String column(int i) {
            return switch (i) {
                case 0 -> timeText;
                case 1 -> shortSession(sessionId);
                case 2 -> type;
                case 3 -> summary;
                case 4 -> status;
                case 5 -> mode;
                case 6 -> filter;
                case 7 -> duration;
                default -> "";
            };
        }
    }

    /** Which rows a status filter keeps. */
    public enum StatusClass {
        ANY, SUCCESS, CLIENT_ERROR, SERVER_ERROR, FAILED;

        boolean matches(Row r) {
            return switch (this) {
                case ANY -> true;
                case SUCCESS -> !r.failed() && (r.statusCode() == 0 || r.statusCode() < 400);
                case CLIENT_ERROR -> r.statusCode() >= 400 && r.statusCode() < 500;
                case SERVER_ERROR -> r.statusCode() >= 500;
                case FAILED -> r.failed();
            };
        }
    }

    /**
     * What the table shows: every whitespace-separated term of {@code text} appears in the row
     * (case-insensitive); {@code method} and {@code mode} ("mirror"/"steal") are exact when set,
     * {@code sessionId} too. {@code null} or empty means "any".
     */
    public record Filter(String text, String method, StatusClass status, String mode, String sessionId) {
        public static final Filter ALL = new Filter("", null, StatusClass.ANY, null, null);

        public boolean matches(Row r) {
            if (set(sessionId) && !r.sessionId().equals(sessionId)) {
                return false;
            }
            if (set(method) && !r.method().equalsIgnoreCase(method)) {
                return false;
            }
            if (set(mode) && !r.mode().equalsIgnoreCase(mode)) {
                return false;
            }
            if (status != null && !status.matches(r)) {
                return false;
            }
            for (String term : (text == null ? "" : text).toLowerCase(Locale.ROOT).split("\\s+")) {
                if (!term.isEmpty() && !r.search().contains(term)) {
                    return false;
                }
            }
            return true;
        }

        private static boolean set(String s) {
            return s != null && !s.isEmpty();
        }
    }

    /** Told after rows were added, trimmed or cleared (on the thread that changed them). */
    public interface Listener {
        void changed();
    }

    private final ZoneId zone;
    private final List<Listener> listeners = new CopyOnWriteArrayList<>();
    // Guarded by `this`.
    private final Deque<Row> rows = new ArrayDeque<>();
    private long nextId = 1;
    private int limit;

    public TrafficModel() {
        this(DEFAULT_LIMIT, ZoneId.systemDefault());
    }

    public TrafficModel(int limit, ZoneId zone) {
        this.limit = Math.max(1, limit);
        this.zone = zone;
    }

    public void addListener(Listener l) {
        listeners.add(l);
    }

    public void removeListener(Listener l) {
        listeners.remove(l);
    }

    public synchronized int limit() {
        return limit;
    }

    public void setLimit(int newLimit) {
        synchronized (this) {
            limit = Math.max(1, newLimit);
            trim();
        }
        fire();
    }

    /** A live event ({@code mirrord/traffic}). */
    public Row add(String sessionId, JsonObject event) {
        Row row;
        synchronized (this) {
            row = toRow(sessionId, event, nextId++);
            rows.addLast(row);
            trim();
        }
        fire();
        return row;
    }

    /** A {@code mirrord/traffic} notification's params; ignored when they are not one. */
    public Row addNotification(JsonElement params) {
        if (params instanceof JsonObject p && Json.obj(p, "event") != null) {
            return add(Json.str(p, "sessionId", ""), Json.obj(p, "event"));
        }
        return null;
    }

    /**
     * A session's history ({@code mirrord/trafficHistory}): events already in the table (same
     * time and content, e.g. received live) are not added twice; rows stay in time order.
     */
    public List<Row> addHistory(String sessionId, List<JsonObject> events) {
        List<Row> added = new ArrayList<>();
        synchronized (this) {
            Set<String> known = new HashSet<>();
            for (Row r : rows) {
                if (r.sessionId().equals(sessionId)) {
                    known.add(r.time() + "|" + r.search());
                }
            }
            for (JsonObject ev : events) {
                Row candidate = toRow(sessionId, ev, 0);
                if (!known.add(candidate.time() + "|" + candidate.search())) {
                    continue;
                }
                Row row = toRow(sessionId, ev, nextId++);
                added.add(row);
                rows.addLast(row);
            }
            if (!added.isEmpty()) {
                List<Row> sorted = new ArrayList<>(rows);
                sorted.sort((a, b) -> a.time() != b.time() ? Long.compare(a.time(), b.time()) : Long.compare(a.id(), b.id()));
                rows.clear();
                rows.addAll(sorted);
                trim();
            }
        }
        if (!added.isEmpty()) {
            fire();
        }
        return added;
    }

    /** Every row, oldest first. */
    public synchronized List<Row> rows() {
        return List.copyOf(rows);
    }

    /** The rows {@code filter} keeps, oldest first. */
    public synchronized List<Row> rows(Filter filter) {
        return rows.stream().filter(filter::matches).toList();
    }

    /** The HTTP methods seen so far (for the method filter's choices). */
    public synchronized List<String> methods() {
        return rows.stream().map(Row::method).filter(m -> !m.isEmpty()).distinct().sorted().toList();
    }

    public void clear() {
        synchronized (this) {
            rows.clear();
        }
        fire();
    }

    private void trim() {
        while (rows.size() > limit) {
            rows.removeFirst();
        }
    }

    private void fire() {
        for (Listener l : listeners) {
            l.changed();
        }
    }

    /** The session id as the table shows it (first 8 characters). */
    public static String shortSession(String id) {
        return id.length() > 8 ? id.substring(0, 8) : id;
    }

    private static final DateTimeFormatter TIME = DateTimeFormatter.ofPattern("HH:mm:ss.SSS");

    public String formatTime(long ms) {
        return TIME.format(Instant.ofEpochMilli(ms).atZone(zone));
    }

    private static String ms(JsonObject e, String key) {
        return e.has(key) ? Json.num(e, key, 0) + " ms" : "";
    }

    /** The event's fields except {@code type}, as name/value pairs. */
    private static List<Map.Entry<String, String>> fields(JsonObject e) {
        List<Map.Entry<String, String>> out = new ArrayList<>();
        for (Map.Entry<String, JsonElement> f : e.entrySet()) {
            if (!f.getKey().equals("type")) {
                out.add(Map.entry(f.getKey(), Json.text(f.getValue())));
            }
        }
        return out;
    }

    /** The row for one event of one session. */
    public Row toRow(String sessionId, JsonObject e, long id) {
        String type = Json.str(e, "type", "event");
        long time = Json.num(e, "time", System.currentTimeMillis());
        Kind kind;
        String label;
        String summary;
        String method = "";
        String status = "";
        int statusCode = 0;
        String mode = "";
        String filter = "";
        String duration = "";
        boolean failed = false;
        List<Map.Entry<String, String>> details;
        switch (type) {
            case "incoming_request" -> {
                kind = Kind.INCOMING;
                label = "HTTP in";
                method = Json.str(e, "method", "");
                summary = method + " " + Json.str(e, "path", "");
                statusCode = (int) Json.num(e, "status", 0);
                status = statusCode == 0 ? "failed" : String.valueOf(statusCode);
                mode = Json.str(e, "mode", "");
                filter = Json.str(e, "matched_filter", "");
                duration = ms(e, "duration_ms");
                failed = statusCode == 0 || statusCode >= 500;
                details = new ArrayList<>();
                details.add(Map.entry("port", String.valueOf(Json.num(e, "port", 0))));
                Json.stringMap(e, "headers").entrySet().stream()
                        .sorted(Map.Entry.comparingByKey())
                        .forEach(h -> details.add(Map.entry(h.getKey(), h.getValue())));
            }
            case "incoming_connection" -> {
                kind = Kind.INCOMING;
                label = "TCP in";
                summary = Json.str(e, "peer", "") + " → :" + Json.num(e, "port", 0);
                mode = Json.str(e, "mode", "");
                details = fields(e);
            }
            case "outgoing_connection" -> {
                kind = Kind.OUTGOING;
                String host = Json.str(e, "host", "");
                String address = Json.str(e, "address", "");
                long port = Json.num(e, "port", 0);
                String dest = (host.isEmpty() ? address : host) + ":" + port;
                label = Json.str(e, "protocol", "tcp").toUpperCase(Locale.ROOT) + " out";
                summary = host.isEmpty() ? dest : dest + " (" + address + ")";
                String error = Json.str(e, "error", "");
                status = error.isEmpty() ? "ok" : error;
                failed = !error.isEmpty();
                details = fields(e);
            }
            case "dns_query" -> {
                kind = Kind.DNS;
                label = "DNS";
                List<String> answers = Json.strings(e, "answers");
                String name = Json.str(e, "name", "");
                summary = answers.isEmpty() ? name : name + " → " + String.join(", ", answers);
                String error = Json.str(e, "error", "");
                status = !error.isEmpty() ? error : answers.size() + (answers.size() == 1 ? " answer" : " answers");
                duration = ms(e, "duration_ms");
                failed = !error.isEmpty();
                details = fields(e);
            }
            case "port_subscription" -> {
                kind = Kind.PORT;
                label = "Port";
                summary = ":" + Json.num(e, "port", 0) + (Json.bool(e, "active", true) ? " subscribed" : " released");
                mode = Json.str(e, "mode", "");
                details = fields(e);
            }
            case "process_connected", "process_disconnected" -> {
                kind = Kind.PROCESS;
                label = "Process";
                summary = Json.str(e, "executable", "") + " (pid " + Json.num(e, "pid", 0) + ") "
                        + (type.equals("process_connected") ? "joined" : "left");
                details = fields(e);
            }
            case "error" -> {
                kind = Kind.ERROR;
                label = "Error";
                summary = Json.str(e, "message", "");
                failed = true;
                details = fields(e);
            }
            default -> {
                kind = Kind.OTHER;
                label = type;
                details = fields(e);
                summary = details.toString();
            }
        }
        StringBuilder search = new StringBuilder();
        for (String s : List.of(label, summary, status, mode, filter, sessionId)) {
            search.append(s).append(' ');
        }
        for (Map.Entry<String, String> d : details) {
            search.append(d.getKey()).append(' ').append(d.getValue()).append(' ');
        }
        return new Row(id, sessionId, kind, time, formatTime(time), label, summary, method, status, statusCode,
                mode, filter, duration, failed, List.copyOf(details), search.toString().toLowerCase(Locale.ROOT));
    }
}
