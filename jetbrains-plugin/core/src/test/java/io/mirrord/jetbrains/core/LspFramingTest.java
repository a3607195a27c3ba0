package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;

class LspFramingTest {
    private static InputStream bytes(String s) {
        return new ByteArrayInputStream(s.getBytes(StandardCharsets.UTF_8));
    }

    private static String read(InputStream in) throws IOException {
        byte[] body = LspFraming.read(in);
        return body == null ? null : new String(body, StandardCharsets.UTF_8);
    }

    /** Hands out one byte per read: every frame arrives split at every possible point. */
    private static final class Trickle extends InputStream {
        private final InputStream in;

        Trickle(InputStream in) {
            this.in = in;
        }

        @Override
        public int read() throws IOException {
            return in.read();
        }

        @Override
        public int read(byte[] b, int off, int len) throws IOException {
            return len == 0 ? 0 : in.read(b, off, 1);
        }
    }

    @Test
    void writesAndReadsFrames() throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        LspFraming.write(out, "{\"a\":\"é\"}");
        String wire = out.toString(StandardCharsets.UTF_8);
        // The length counts bytes, not characters.
        assertTrue(wire.startsWith("Content-Length: 10\r\n\r\n"), wire);
        assertEquals("{\"a\":\"é\"}", read(new ByteArrayInputStream(out.toByteArray())));
    }

    @Test
    void readsFramesSplitAtEveryByteAndSeveralInOneChunk() throws IOException {
        String two = "Content-Length: 2\r\n\r\n{}Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n"
                + "content-length:  7 \r\n\r\n[1,2,3]";
        for (InputStream in : new InputStream[] {bytes(two), new Trickle(bytes(two))}) {
            assertEquals("{}", read(in));
            assertEquals("[1,2,3]", read(in));
            assertNull(read(in), "end of stream between frames");
        }
    }

    @Test
    void toleratesBareNewlinesAndBlankLinesBetweenFrames() throws IOException {
        InputStream in = bytes("\r\n\nContent-Length: 1\n\n1\r\nContent-Length: 1\r\n\r\n2");
        assertEquals("1", read(in));
        assertEquals("2", read(in));
        assertNull(read(in));
    }

    @Test
    void aFrameWithoutContentLengthIsReportedAndTheNextOneIsRead() throws IOException {
        InputStream in = bytes("Content-Type: x\r\n\r\nContent-Length: 2\r\n\r\nok");
        var e = assertThrows(LspFraming.MalformedFrameException.class, () -> LspFraming.read(in));
        assertTrue(e.getMessage().contains("without a Content-Length"), e.getMessage());
        assertEquals("ok", read(in));
    }

    @Test
    void invalidAndNegativeLengthsAreReported() throws IOException {
        InputStream in = bytes("Content-Length: abc\r\n\r\nContent-Length: -5\r\n\r\nContent-Length: 1\r\n\r\nx");
        var bad = assertThrows(LspFraming.MalformedFrameException.class, () -> LspFraming.read(in));
        assertTrue(bad.getMessage().contains("invalid Content-Length"), bad.getMessage());
        var negative = assertThrows(LspFraming.MalformedFrameException.class, () -> LspFraming.read(in));
        assertTrue(negative.getMessage().contains("negative"), negative.getMessage());
        assertEquals("x", read(in));
    }

    @Test
    void aHeaderLineWithoutColonSkipsItsFrame() throws IOException {
        InputStream in = bytes("garbage\r\nContent-Length: 3\r\n\r\nbadContent-Length: 4\r\n\r\ngood");
        var e = assertThrows(LspFraming.MalformedFrameException.class, () -> LspFraming.read(in));
        assertTrue(e.getMessage().contains("without a colon"), e.getMessage());
        assertEquals("good", read(in));
    }

    @Test
    void anOverLongHeaderLineSkipsItsFrame() throws IOException {
        String longLine = "X-Junk: " + "j".repeat(LspFraming.MAX_HEADER_LINE + 10);
        InputStream in = bytes(longLine + "\r\nContent-Length: 3\r\n\r\nbadContent-Length: 2\r\n\r\nok");
        var e = assertThrows(LspFraming.MalformedFrameException.class, () -> LspFraming.read(in));
        assertTrue(e.getMessage().contains("header line over"), e.getMessage());
        assertEquals("ok", read(in));
    }

    @Test
    void anOverLargeFrameIsSkippedWithoutBeingKept() throws IOException {
        int n = LspFraming.MAX_BODY + 1;
        byte[] head = ("Content-Length: " + n + "\r\n\r\n").getBytes(StandardCharsets.US_ASCII);
        byte[] tail = "Content-Length: 2\r\n\r\nok".getBytes(StandardCharsets.US_ASCII);
        byte[] all = new byte[head.length + n + tail.length];
        System.arraycopy(head, 0, all, 0, head.length);
        System.arraycopy(tail, 0, all, head.length + n, tail.length);
        InputStream in = new ByteArrayInputStream(all);
        var e = assertThrows(LspFraming.MalformedFrameException.class, () -> LspFraming.read(in));
        assertTrue(e.getMessage().contains("over the limit"), e.getMessage());
        assertEquals("ok", read(in));
    }

    @Test
    void theStreamEndingInsideAFrameIsAnError() {
        assertThrows(EOFException.class, () -> LspFraming.read(bytes("Content-Length: 10\r\n\r\n{\"jso")));
        assertThrows(EOFException.class, () -> LspFraming.read(bytes("Content-Length: 10\r\n")));
        assertThrows(EOFException.class, () -> LspFraming.read(bytes("Content-Len")));
    }

    @Test
    void frameBytesAreHeaderPlusBody() {
        assertArrayEquals("Content-Length: 2\r\n\r\n{}".getBytes(StandardCharsets.US_ASCII),
                LspFraming.frame("{}".getBytes(StandardCharsets.US_ASCII)));
    }
}
