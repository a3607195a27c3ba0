"""payment-service (k8s namespace "payments") of the simulated cluster.

- HTTP on --http-port (8080), every response marked `x-served-by: payment-service`:
  GET /        -> `payment-service: hello\n`
  GET /bytes   -> the bulk blob (--bulk, 100 MiB, created on first use), with Content-Length
  ANY /echo    -> the request body
  ANY /whoami  -> `payment-service: peer <ip>:<port>\n` (shows where a connection came from)
  anything else -> 404
- TCP echo on --tcp-echo-port (9000), UDP echo on --udp-echo-port (9001).
Prints `ready` on stdout once every socket is bound.
"""

import argparse
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler

import bulk
from httpcommon import Server, read_body, send_text

NAME = "payment-service"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "payment-service/1"
    # TCP_NODELAY, as production HTTP servers set it: the status line and headers go out in one
    # write and the body in another, and with Nagle the body would wait for the peer's delayed
    # ACK (40 ms) on every keep-alive request.
    disable_nagle_algorithm = True
    bulk_path = None

    def log_message(self, format, *args):  # noqa: A002 - silence stderr access logs
        pass

    def _serve(self):
        path = self.path.split("?", 1)[0]
        try:
            body = read_body(self, limit=16 << 20 if path == "/echo" else 0)
        except ValueError as e:
            self.close_connection = True
            send_text(self, 400, NAME, f"{NAME}: bad request: {e}\n")
            return
        if path == "/" and self.command in ("GET", "HEAD"):
            send_text(self, 200, NAME, f"{NAME}: hello\n")
        elif path == "/bytes" and self.command in ("GET", "HEAD"):
            self._bulk()
        elif path == "/echo":
            if body is None:
                send_text(self, 413, NAME, f"{NAME}: body too large\n")
            else:
                send_text(self, 200, NAME, body)
        elif path == "/whoami":
            ip, port = self.client_address[:2]
            send_text(self, 200, NAME, f"{NAME}: peer {ip}:{port}\n")
        else:
            send_text(self, 404, NAME, f"{NAME}: not found: {self.command} {self.path}\n")

    def _bulk(self):
        bulk.ensure(Handler.bulk_path)
        with open(Handler.bulk_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("x-served-by", NAME)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command != "HEAD":
                # sendfile(2): no copy through Python.
                self.connection.sendfile(f)

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)


def tcp_echo(listener):
    def serve(conn):
        with conn:
            try:
                while True:
                    data = conn.recv(1 << 16)
                    if not data:
                        break
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def udp_echo(sock):
    while True:
        data, peer = sock.recvfrom(65535)
        try:
            sock.sendto(data, peer)
        except OSError:
            pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--tcp-echo-port", type=int, default=9000)
    p.add_argument("--udp-echo-port", type=int, default=9001)
    p.add_argument("--bulk", required=True)
    a = p.parse_args()
    Handler.bulk_path = a.bulk

    http = Server(("0.0.0.0", a.http_port), Handler)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", a.tcp_echo_port))
    tcp.listen(1024)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", a.udp_echo_port))

    threading.Thread(target=tcp_echo, args=(tcp,), daemon=True).start()
    threading.Thread(target=udp_echo, args=(udp,), daemon=True).start()
    print("ready", flush=True)
    http.serve_forever()


if __name__ == "__main__":
    main()
