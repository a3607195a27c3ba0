"""The developer's program in the reconnect tests: it serves HTTP on a port (answers marked
`x-served-by: local`, so a steal is visible from the cluster) and asks a cluster service once
every 100 ms, printing one line per attempt:

    ok N T                    the answer came; T: CLOCK_MONOTONIC seconds when it did
    fail N KIND DETAIL        KIND: dns-again (EAI_AGAIN), dns (another lookup error), connect

    held open / held ended: eof|reset DETAIL   (with HOLD) a connection to URL's host and port
                              opened at start and left idle, and how it ended

usage: reconnect_probe.py PORT URL MAX_SECONDS [INTERVAL_SECONDS [HOLD]]
PORT 0: serve nothing. HOLD: "hold" to keep the idle connection. Prints "listening" once it listens; stops after MAX_SECONDS (a bound:
the test ends it sooner). INTERVAL_SECONDS: 0.1 unless given.
"""

import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from httpcommon import Server, send_text  # noqa: E402

port, url, max_seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
interval = float(sys.argv[4]) if len(sys.argv) > 4 else 0.1
hold = len(sys.argv) > 5 and sys.argv[5] == "hold"


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        send_text(self, 200, "local", "local: GET %s\n" % self.path)


if port:
    server = Server(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
say("listening %d" % port)

host = url.split("//", 1)[1].split(":", 1)[0].split("/", 1)[0]
host_port = int(url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def held():
    """A flow in progress when the connection to the cluster drops: it must end, not hang."""
    conn = socket.create_connection((host, host_port), timeout=10)
    conn.settimeout(None)
    say("held open")
    try:
        data = conn.recv(1)
        say("held ended: eof" if not data else "held ended: data %r" % data)
    except OSError as e:
        say("held ended: reset %s" % e)


if hold:
    threading.Thread(target=held, daemon=True).start()
deadline = time.monotonic() + max_seconds
n = 0
while time.monotonic() < deadline:
    n += 1
    started = time.monotonic()
    try:
        # The lookup on its own first: its error kind is part of what the test checks.
        socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        kind = "dns-again" if e.errno == socket.EAI_AGAIN else "dns"
        say("fail %d %s %s" % (n, kind, e))
    else:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                r.read()
            say("ok %d %.6f" % (n, time.monotonic()))
        except (OSError, urllib.error.URLError) as e:
            # urlopen looks the name up again: the outage may start between the two lookups.
            reason = getattr(e, "reason", e)
            if isinstance(reason, socket.gaierror):
                kind = "dns-again" if reason.errno == socket.EAI_AGAIN else "dns"
            else:
                kind = "connect"
            say("fail %d %s %s" % (n, kind, e))
    time.sleep(max(0.0, interval - (time.monotonic() - started)))
