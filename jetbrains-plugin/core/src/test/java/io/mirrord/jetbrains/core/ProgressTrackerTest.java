package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonParser;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

class ProgressTrackerTest {
    private final List<String> seen = new ArrayList<>();
    private final ProgressTracker tracker = new ProgressTracker(new ProgressTracker.Listener() {
        @Override
        public void begin(String token, String title) {
            seen.add("begin " + token + " " + title);
        }

        @Override
        public void report(String token, String message) {
            seen.add("report " + token + " " + message);
        }

        @Override
        public void end(String token, String message) {
            seen.add("end " + token + " " + message);
        }
    });

    private void progress(String json) {
        tracker.progress(JsonParser.parseString(json));
    }

    @Test
    void followsCreatedTokensOnly() {
        progress("{\"token\":\"x\",\"value\":{\"kind\":\"begin\",\"title\":\"not created\"}}");
        tracker.create(JsonParser.parseString("{\"token\":\"t\"}"));
        progress("{\"token\":\"t\",\"value\":{\"kind\":\"report\",\"message\":\"before begin\"}}");
        progress("{\"token\":\"t\",\"value\":{\"kind\":\"begin\",\"title\":\"starting the agent\"}}");
        assertEquals(1, tracker.active().size());
        progress("{\"token\":\"t\",\"value\":{\"kind\":\"report\",\"message\":\"waiting\"}}");
        assertEquals("waiting", tracker.active().get(0).message());
        progress("{\"token\":\"t\",\"value\":{\"kind\":\"end\",\"message\":\"ready\"}}");
        progress("{\"token\":\"t\",\"value\":{\"kind\":\"report\",\"message\":\"after end\"}}");
        assertEquals(List.of("begin t starting the agent", "report t waiting", "end t ready"), seen);
        assertTrue(tracker.active().isEmpty());
    }

    @Test
    void numericTokensAndMalformedParamsAreHandled() {
        tracker.create(JsonParser.parseString("{\"token\":7}"));
        progress("{\"token\":7,\"value\":{\"kind\":\"begin\",\"title\":\"n\"}}");
        progress("{\"token\":7}");
        progress("[1]");
        progress("{\"token\":7,\"value\":{\"kind\":\"weird\"}}");
        assertEquals(List.of("begin 7 n"), seen);
    }

    @Test
    void aDeadDaemonEndsEveryActiveProgress() {
        tracker.create(JsonParser.parseString("{\"token\":\"a\"}"));
        tracker.create(JsonParser.parseString("{\"token\":\"b\"}"));
        progress("{\"token\":\"a\",\"value\":{\"kind\":\"begin\",\"title\":\"A\"}}");
        tracker.abandonAll("mirrord-server exited");
        assertEquals(List.of("begin a A", "end a mirrord-server exited"), seen);
        progress("{\"token\":\"b\",\"value\":{\"kind\":\"begin\",\"title\":\"B\"}}");
        assertEquals(2, seen.size(), "tokens of the dead daemon are forgotten");
    }
}
