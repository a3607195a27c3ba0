"""The developer's program in the incoming-traffic tests: an HTTP/1.1 server that marks its
answers as local, reports every request on stdout as one JSON line, and echoes websockets.

usage: local_http.py PORT [--delay SECONDS] [--name NAME] [--bind ADDR]
Prints "listening <sockname>" once it listens.
"""

import argparse
import base64
import hashlib
import json
import os
import resource
import sys
import time
from http.server import BaseHTTPRequestHandler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from httpcommon import Server, read_body  # noqa: E402

args = argparse.ArgumentParser()
args.add_argument("port", type=int)
args.add_argument("--delay", type=float, default=0.0)
args.add_argument("--name", default="local")
args.add_argument("--bind", default="0.0.0.0")
opts = args.parse_args()

# Load tests hold 1,000+ connections at once (a server in a pod usually has a high limit).
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def handle_any(self):
        body = read_body(self, limit=1 << 20) or b""
        emit({
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
            "peer": "%s:%d" % self.client_address[:2],
            "sockname": "%s:%d" % self.connection.getsockname()[:2],
            "peername": "%s:%d" % self.connection.getpeername()[:2],
        })
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if opts.delay:
            time.sleep(opts.delay)
        out = ("%s: %s %s\n" % (opts.name, self.command, self.path)).encode()
        self.send_response(200)
        self.send_header("x-served-by", opts.name)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        # Echo frames (client frames are masked) until a close frame or EOF.
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(self.rfile.read(2), "big")
            elif length == 127:
                length = int.from_bytes(self.rfile.read(8), "big")
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                return
            reply = ("%s echo: " % opts.name).encode() + data
            self.wfile.write(bytes([0x81, len(reply)]) + reply)
            self.wfile.flush()
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any


if ":" in opts.bind:
    import socket
    Server.address_family = socket.AF_INET6
server = Server((opts.bind, opts.port), Handler)
emit({"listening": "%s:%d" % server.socket.getsockname()[:2], "pid": os.getpid()})
server.serve_forever()
