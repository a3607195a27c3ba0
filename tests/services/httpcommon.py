"""Pieces shared by the HTTP services of the simulated cluster.

Run with /usr/bin/python3 -B (no __pycache__ next to the sources).
"""

from http.server import ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    """Threaded HTTP/1.1 server sized for load tests (200+ concurrent connections)."""

    # The listen backlog: bursts of hundreds of connects must not be dropped.
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True


def read_body(handler, limit=None):
    """Reads the request body (Content-Length or chunked).

    Returns the bytes when `limit` is None or the body fits in it; otherwise the body is
    read and discarded (so keep-alive framing stays correct) and None is returned.
    Raises ValueError on a malformed length.
    """
    keep = []
    kept = 0

    def take(n):
        nonlocal kept
        while n > 0:
            chunk = handler.rfile.read(min(n, 1 << 16))
            if not chunk:
                raise ValueError("body shorter than announced")
            n -= len(chunk)
            if limit is None or kept + len(chunk) <= limit:
                keep.append(chunk)
                kept += len(chunk)
            else:
                keep.clear()
                kept = limit + 1

    te = handler.headers.get("Transfer-Encoding", "")
    if "chunked" in te.lower():
        while True:
            line = handler.rfile.readline(1024)
            if not line:
                raise ValueError("eof in chunk size")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Trailers, up to the empty line.
                while handler.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                break
            take(size)
            handler.rfile.readline(16)  # CRLF after the chunk
    else:
        length = int(handler.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        take(length)
    if limit is not None and kept > limit:
        return None
    return b"".join(keep)


def send_text(handler, status, served_by, body, extra_headers=()):
    """Sends a small text/plain response marked with `x-served-by`."""
    data = body.encode() if isinstance(body, str) else body
    handler.send_response(status)
    handler.send_header("x-served-by", served_by)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in extra_headers:
        handler.send_header(name, value)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)
