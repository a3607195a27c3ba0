package io.mirrord.jetbrains.core;

import java.io.ByteArrayOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.Locale;

/**
 * LSP base-protocol framing ({@code Content-Length: N\r\n\r\n} + N bytes of JSON), the framing
 * of {@code mirrord-server --stdio}.
 *
 * <p>Reading is strict about what it needs and lenient about the rest: unknown headers are
 * ignored, but a header block without a usable {@code Content-Length}, an over-long header line
 * or an over-large body is a {@link MalformedFrameException}, after which the reader is still
 * positioned at the next frame (the body of an over-large frame is skipped) so the caller can
 * report it and go on. The end of the stream is {@code null} between frames and an
 * {@link EOFException} inside one.
 */
public final class LspFraming {
    /** Largest body accepted from the daemon (a trafficHistory answer is well under this). */
    public static final int MAX_BODY = 64 << 20;
    /** Longest header line accepted. */
    public static final int MAX_HEADER_LINE = 8 << 10;

    private LspFraming() {}

    /** A frame that could not be read; the stream is positioned at the next frame. */
    public static final class MalformedFrameException extends IOException {
        private static final long serialVersionUID = 1L;

        public MalformedFrameException(String message) {
            super(message);
        }
    }

    public static byte[] frame(byte[] body) {
        byte[] head = ("Content-Length: " + body.length + "\r\n\r\n").getBytes(StandardCharsets.US_ASCII);
        byte[] out = new byte[head.length + body.length];
        System.arraycopy(head, 0, out, 0, head.length);
        System.arraycopy(body, 0, out, head.length, body.length);
        return out;
    }

    /** Writes one whole frame and flushes (callers serialise writers). */
    public static void write(OutputStream out, String json) throws IOException {
        out.write(frame(json.getBytes(StandardCharsets.UTF_8)));
        out.flush();
    }

    /**
     * The next frame's body, or {@code null} at the end of the stream before a frame starts.
     *
     * @throws MalformedFrameException for a frame that cannot be used (the next one can)
     * @throws EOFException when the stream ends inside a frame
     */
    public static byte[] read(InputStream in) throws IOException {
        Long length = null;
        String problem = null;
        boolean seenHeader = false;
        while (true) {
            String line = readLine(in, seenHeader);
            if (line == null) {
                return null;
            }
            if (line == TOO_LONG) {
                seenHeader = true;
                problem = "a header line over " + MAX_HEADER_LINE + " bytes";
                continue;
            }
            if (line.isEmpty()) {
                if (seenHeader) {
                    break;
                }
                // Blank lines between frames are tolerated.
                continue;
            }
            seenHeader = true;
            int colon = line.indexOf(':');
            if (colon < 0) {
                problem = "a header line without a colon: " + quote(line);
                continue;
            }
            String name = line.substring(0, colon).trim().toLowerCase(Locale.ROOT);
            if (name.equals("content-length")) {
                String value = line.substring(colon + 1).trim();
                try {
                    length = Long.parseLong(value);
                    if (length < 0) {
                        problem = "a negative Content-Length: " + quote(value);
                        length = null;
                    }
                } catch (NumberFormatException e) {
                    problem = "an invalid Content-Length: " + quote(value);
                }
            }
        }
        if (length == null) {
            throw new MalformedFrameException(problem != null ? problem : "a frame without a Content-Length header");
        }
        if (problem != null) {
            // The frame's extent is known: skip it so the next frame is read from its start.
            skip(in, length);
            throw new MalformedFrameException(problem);
        }
        if (length > MAX_BODY) {
            skip(in, length);
            throw new MalformedFrameException("a frame of " + length + " bytes, over the limit of " + MAX_BODY);
        }
        byte[] body = in.readNBytes((int) (long) length);
        if (body.length < length) {
            throw new EOFException("the stream ended inside a frame (" + body.length + " of " + length + " bytes)");
        }
        return body;
    }

    private static void skip(InputStream in, long n) throws IOException {
        long left = n;
        while (left > 0) {
            long skipped = in.skip(left);
            if (skipped <= 0) {
                if (in.read() < 0) {
                    throw new EOFException("the stream ended inside an over-large frame");
                }
                skipped = 1;
            }
            left -= skipped;
        }
    }

    /** What {@link #readLine} returns for a line over {@link #MAX_HEADER_LINE} (compared by identity). */
    private static final String TOO_LONG = new String("<too long>");

    /**
     * A header line without its CR LF, {@link #TOO_LONG} for an over-long one (read to its end),
     * {@code null} at end of stream before any byte.
     */
    private static String readLine(InputStream in, boolean insideFrame) throws IOException {
        ByteArrayOutputStream line = new ByteArrayOutputStream();
        boolean tooLong = false;
        while (true) {
            int b = in.read();
            if (b < 0) {
                if (line.size() == 0 && !insideFrame) {
                    return null;
                }
                throw new EOFException("the stream ended inside a frame header");
            }
            if (b == '\n') {
                break;
            }
            if (line.size() >= MAX_HEADER_LINE) {
                tooLong = true;
                continue;
            }
            line.write(b);
        }
        if (tooLong) {
            return TOO_LONG;
        }
        String s = line.toString(StandardCharsets.US_ASCII);
        return s.endsWith("\r") ? s.substring(0, s.length() - 1) : s;
    }

    private static String quote(String s) {
        String cut = s.length() > 80 ? s.substring(0, 80) + "…" : s;
        return "\"" + cut + "\"";
    }
}
