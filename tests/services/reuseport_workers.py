"""A pre-fork HTTP server: the parent forks WORKERS processes and each one opens its own
listening socket on PORT with SO_REUSEPORT (as gunicorn with reuse_port, or any pre-fork server,
does), so the kernel spreads connections over them. Every answer carries
`x-served-by: worker-<n>`.

usage: reuseport_workers.py PORT WORKERS
Prints "listening <n workers>" once every worker listens; exits (and ends its workers) on
SIGTERM or SIGINT.
"""

import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port = int(sys.argv[1])
workers = int(sys.argv[2])


def worker(n, ready_w):
    name = "worker-%d" % n

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            out = ("%s: GET %s\n" % (name, self.path)).encode()
            self.send_response(200)
            self.send_header("x-served-by", name)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = HTTPServer(("0.0.0.0", port), Handler, bind_and_activate=False)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    server.server_bind()
    server.server_activate()
    os.write(ready_w, b"r")
    os.close(ready_w)
    server.serve_forever()


children = []
ready_r, ready_w = os.pipe()
for n in range(workers):
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        try:
            worker(n, ready_w)
        finally:
            os._exit(1)
    children.append(pid)
os.close(ready_w)
got = b""
while len(got) < workers:
    chunk = os.read(ready_r, workers)
    if not chunk:
        sys.stderr.write("a worker failed to listen\n")
        break
    got += chunk


def stop(*_):
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
print("listening %d" % len(got), flush=True)
while True:
    try:
        pid, _ = os.wait()
    except ChildProcessError:
        break
    if pid in children:
        sys.stderr.write("worker %d exited\n" % pid)
        stop()
