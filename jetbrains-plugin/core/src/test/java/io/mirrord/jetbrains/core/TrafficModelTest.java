package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import io.mirrord.jetbrains.core.TrafficModel.Filter;
import io.mirrord.jetbrains.core.TrafficModel.Kind;
import io.mirrord.jetbrains.core.TrafficModel.Row;
import io.mirrord.jetbrains.core.TrafficModel.StatusClass;
import java.time.ZoneOffset;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

class TrafficModelTest {
    /** 2026-01-02 03:04:05.678 UTC */
    private static final long T = 1767323045678L;

    private static JsonObject ev(String json) {
        return JsonParser.parseString(json).getAsJsonObject();
    }

    private static JsonObject request(long time, String method, String path, int status, String mode, String user) {
        return ev("{\"type\":\"incoming_request\",\"time\":" + time + ",\"port\":80,\"method\":\"" + method + "\",\"path\":\""
                + path + "\",\"headers\":{\"x-user\":\"" + user + "\",\"accept\":\"*/*\"},\"status\":" + status
                + ",\"duration_ms\":12,\"mode\":\"" + mode + "\"" + (mode.equals("steal") ? ",\"matched_filter\":\"x-user: alice\"" : "") + "}");
    }

    private final TrafficModel model = new TrafficModel(100, ZoneOffset.UTC);

    @Test
    void incomingRequestsBecomeHttpRows() {
        Row r = model.add("0123456789abcdef", request(T, "GET", "/pay", 200, "steal", "alice"));
        assertEquals(Kind.INCOMING, r.kind());
        assertEquals("03:04:05.678", r.timeText());
        assertEquals("HTTP in", r.type());
        assertEquals("GET /pay", r.summary());
        assertEquals("GET", r.method());
        assertEquals("200", r.status());
        assertEquals(200, r.statusCode());
        assertEquals("steal", r.mode());
        assertEquals("x-user: alice", r.filter());
        assertEquals("12 ms", r.duration());
        assertFalse(r.failed());
        assertEquals(List.of(Map.entry("port", "80"), Map.entry("accept", "*/*"), Map.entry("x-user", "alice")), r.details());
        assertEquals("01234567", r.column(1));
        assertEquals(List.of("03:04:05.678", "01234567", "HTTP in", "GET /pay", "200", "steal", "x-user: alice", "12 ms"),
                java.util.stream.IntStream.range(0, TrafficModel.COLUMNS.size()).mapToObj(r::column).toList());
        Row failed = model.add("s", request(T, "POST", "/x", 0, "mirror", "bob"));
        assertEquals("failed", failed.status());
        assertTrue(failed.failed());
        assertTrue(model.add("s", request(T, "GET", "/y", 503, "mirror", "bob")).failed());
    }

    @Test
    void otherEventsBecomeTheirRows() {
        Row out = model.add("s", ev("{\"type\":\"outgoing_connection\",\"time\":1,\"host\":\"payment-service\",\"address\":\"10.96.0.50\",\"port\":8080,\"protocol\":\"tcp\"}"));
        assertEquals(List.of(Kind.OUTGOING, "TCP out", "payment-service:8080 (10.96.0.50)", "ok", false),
                List.of(out.kind(), out.type(), out.summary(), out.status(), out.failed()));
        Row refused = model.add("s", ev("{\"type\":\"outgoing_connection\",\"time\":1,\"address\":\"10.96.0.50\",\"port\":8081,\"protocol\":\"udp\",\"error\":\"connection refused\"}"));
        assertEquals(List.of("UDP out", "10.96.0.50:8081", "connection refused", true),
                List.of(refused.type(), refused.summary(), refused.status(), refused.failed()));
        Row dns = model.add("s", ev("{\"type\":\"dns_query\",\"time\":1,\"name\":\"payment-service\",\"answers\":[\"10.96.0.50\"],\"duration_ms\":3}"));
        assertEquals(List.of(Kind.DNS, "payment-service → 10.96.0.50", "1 answer", "3 ms"),
                List.of(dns.kind(), dns.summary(), dns.status(), dns.duration()));
        Row nx = model.add("s", ev("{\"type\":\"dns_query\",\"time\":1,\"name\":\"nope\",\"answers\":[],\"duration_ms\":3,\"error\":\"NXDOMAIN\"}"));
        assertEquals(List.of("nope", "NXDOMAIN", true), List.of(nx.summary(), nx.status(), nx.failed()));
        Row port = model.add("s", ev("{\"type\":\"port_subscription\",\"time\":1,\"port\":80,\"mode\":\"steal\",\"active\":false}"));
        assertEquals(List.of(Kind.PORT, ":80 released", "steal"), List.of(port.kind(), port.summary(), port.mode()));
        Row joined = model.add("s", ev("{\"type\":\"process_connected\",\"time\":1,\"pid\":42,\"executable\":\"/usr/bin/java\"}"));
        assertEquals("/usr/bin/java (pid 42) joined", joined.summary());
        Row left = model.add("s", ev("{\"type\":\"process_disconnected\",\"time\":1,\"pid\":42,\"executable\":\"/usr/bin/java\"}"));
        assertEquals("/usr/bin/java (pid 42) left", left.summary());
        Row conn = model.add("s", ev("{\"type\":\"incoming_connection\",\"time\":1,\"peer\":\"10.244.0.20:5555\",\"port\":80,\"mode\":\"mirror\"}"));
        assertEquals(List.of("TCP in", "10.244.0.20:5555 → :80", "mirror"), List.of(conn.type(), conn.summary(), conn.mode()));
        Row error = model.add("s", ev("{\"type\":\"error\",\"time\":1,\"message\":\"the agent exited\"}"));
        assertEquals(List.of(Kind.ERROR, "the agent exited", true), List.of(error.kind(), error.summary(), error.failed()));
        assertTrue(error.details().contains(Map.entry("message", "the agent exited")));
    }

    @Test
    void unknownOrIncompleteEventsStillMakeRows() {
        Row future = model.add("s", ev("{\"type\":\"tls_handshake\",\"time\":5,\"sni\":\"x\"}"));
        assertEquals(Kind.OTHER, future.kind());
        assertEquals("tls_handshake", future.type());
        assertTrue(future.search().contains("sni"));
        Row bare = model.add("s", ev("{\"type\":\"incoming_request\"}"));
        assertEquals("failed", bare.status());
        assertEquals(" ", bare.summary());
        assertNull(model.addNotification(JsonParser.parseString("{\"sessionId\":\"s\"}")));
        assertEquals("GET /n", model.addNotification(JsonParser.parseString(
                "{\"sessionId\":\"s\",\"event\":" + request(T, "GET", "/n", 200, "mirror", "x") + "}")).summary());
    }

    @Test
    void filtersByTextMethodStatusModeAndSession() {
        Row a = model.add("s1", request(T, "GET", "/pay", 200, "steal", "alice"));
        Row b = model.add("s1", request(T + 1, "POST", "/pay", 404, "mirror", "bob"));
        Row c = model.add("s2", request(T + 2, "GET", "/health", 503, "mirror", "carol"));
        Row d = model.add("s2", ev("{\"type\":\"dns_query\",\"time\":1,\"name\":\"payment-service\",\"answers\":[],\"duration_ms\":1,\"error\":\"timeout\"}"));
        assertEquals(List.of(a, b, c, d), model.rows(Filter.ALL));
        assertEquals(List.of(a, b), model.rows(new Filter("/PAY", null, StatusClass.ANY, null, null)));
        assertEquals(List.of(a), model.rows(new Filter("/pay alice", null, null, null, null)), "every term must match");
        assertEquals(List.of(a, c), model.rows(new Filter("", "get", StatusClass.ANY, null, null)));
        assertEquals(List.of(a), model.rows(new Filter("", null, StatusClass.SUCCESS, null, null)));
        assertEquals(List.of(b), model.rows(new Filter("", null, StatusClass.CLIENT_ERROR, null, null)));
        assertEquals(List.of(c), model.rows(new Filter("", null, StatusClass.SERVER_ERROR, null, null)));
        assertEquals(List.of(c, d), model.rows(new Filter("", null, StatusClass.FAILED, null, null)));
        assertEquals(List.of(b, c), model.rows(new Filter("", null, StatusClass.ANY, "mirror", null)));
        assertEquals(List.of(c, d), model.rows(new Filter("", null, StatusClass.ANY, null, "s2")));
        assertEquals(List.of("GET", "POST"), model.methods());
    }

    @Test
    void keepsTheLastRowsOnlyAndTellsListeners() {
        TrafficModel small = new TrafficModel(3, ZoneOffset.UTC);
        AtomicInteger changes = new AtomicInteger();
        small.addListener(changes::incrementAndGet);
        for (int i = 0; i < 5; i++) {
            small.add("s", request(T + i, "GET", "/" + i, 200, "mirror", "u"));
        }
        assertEquals(List.of("GET /2", "GET /3", "GET /4"), small.rows().stream().map(Row::summary).toList());
        assertEquals(5, changes.get());
        small.setLimit(1);
        assertEquals(List.of("GET /4"), small.rows().stream().map(Row::summary).toList());
        small.setLimit(0);
        assertEquals(1, small.limit(), "at least one row");
        small.clear();
        assertTrue(small.rows().isEmpty());
        assertEquals(8, changes.get());
    }

    @Test
    void historyAddsWhatWasMissedOnceAndInTimeOrder() {
        JsonObject live = request(T + 10, "GET", "/live", 200, "mirror", "u");
        model.add("s", live);
        model.add("other", request(T + 5, "GET", "/elsewhere", 200, "mirror", "u"));
        JsonObject older = request(T, "GET", "/older", 200, "mirror", "u");
        List<Row> added = model.addHistory("s", List.of(older, live, older));
        assertEquals(List.of("GET /older"), added.stream().map(Row::summary).toList());
        assertEquals(List.of("GET /older", "GET /elsewhere", "GET /live"), model.rows().stream().map(Row::summary).toList());
        assertTrue(model.addHistory("s", List.of(older, live)).isEmpty());
    }
}
