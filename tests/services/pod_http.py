"""The target pod's HTTP service (simulated cluster).

Answers every method on every path with `x-served-by: <NAME>` and the body
`<NAME>: <METHOD> <PATH>\n` (NAME is --name, default `pod`; the simulated Kubernetes API gives
each pod its own name), after reading and discarding the request body. HTTP/1.1 with
keep-alive. Each request is appended as `<METHOD> <PATH>` to --log (when given), so tests
can see what reached the pod. Prints `ready` on stdout once the socket is bound.
"""

import argparse
import sys
import threading
from http.server import BaseHTTPRequestHandler

from httpcommon import Server, read_body, send_text


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pod/1"
    # TCP_NODELAY, as production HTTP servers set it: the status line and headers go out in one
    # write and the body in another, and with Nagle the body would wait for the peer's delayed
    # ACK (40 ms) on every keep-alive request.
    disable_nagle_algorithm = True
    log_file = None
    name = "pod"
    log_lock = threading.Lock()

    def log_message(self, format, *args):  # noqa: A002 - silence stderr access logs
        pass

    def _serve(self):
        try:
            read_body(self, limit=0)
        except ValueError as e:
            self.close_connection = True
            send_text(self, 400, Handler.name, f"{Handler.name}: bad request: {e}\n")
            return
        if Handler.log_file is not None:
            with Handler.log_lock:
                Handler.log_file.write(f"{self.command} {self.path}\n")
                Handler.log_file.flush()
        send_text(self, 200, Handler.name, f"{Handler.name}: {self.command} {self.path}\n")

    def __getattr__(self, name):
        # BaseHTTPRequestHandler dispatches to do_<METHOD>: serve any method.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--log")
    p.add_argument("--name", default="pod")
    a = p.parse_args()
    Handler.name = a.name
    if a.log:
        Handler.log_file = open(a.log, "a", encoding="utf-8")
    server = Server(("0.0.0.0", a.port), Handler)
    print("ready", flush=True)
    try:
        server.serve_forever()
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    main()
