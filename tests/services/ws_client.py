"""A minimal websocket client: handshake (with extra headers), one masked text frame, one reply.

usage: ws_client.py HOST PORT MESSAGE [HEADER: VALUE ...]
With WS_TLS_CA set (a CA file), the connection is TLS, checked against that CA.
Prints {"status": <handshake status line>, "accept_ok": bool, "served_by": ..., "reply": text}.
"""

import base64
import hashlib
import json
import os
import socket
import ssl
import sys

host, port, message = sys.argv[1], int(sys.argv[2]), sys.argv[3]
extra = sys.argv[4:]
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

key = base64.b64encode(os.urandom(16)).decode()
lines = [
    "GET /ws HTTP/1.1",
    "Host: %s:%d" % (host, port),
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: " + key,
    "Sec-WebSocket-Version: 13",
] + extra
s = socket.create_connection((host, port), timeout=10)
if os.environ.get("WS_TLS_CA"):
    ctx = ssl.create_default_context(cafile=os.environ["WS_TLS_CA"])
    ctx.set_alpn_protocols(["http/1.1"])
    s = ctx.wrap_socket(s, server_hostname=host)
s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

buf = b""
while b"\r\n\r\n" not in buf:
    chunk = s.recv(4096)
    if not chunk:
        break
    buf += chunk
head, _, rest = buf.partition(b"\r\n\r\n")
head_lines = head.decode("latin-1").split("\r\n")
headers = {}
for line in head_lines[1:]:
    k, _, v = line.partition(":")
    headers[k.strip().lower()] = v.strip()
expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()

reply = None
if head_lines[0].split(" ")[1:2] == ["101"]:
    payload = message.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def read_exact(n):
        global rest
        while len(rest) < n:
            chunk = s.recv(4096)
            if not chunk:
                raise EOFError("connection closed")
            rest += chunk
        out, rest = rest[:n], rest[n:]
        return out

    h = read_exact(2)
    length = h[1] & 0x7F
    if length == 126:
        length = int.from_bytes(read_exact(2), "big")
    reply = read_exact(length).decode("utf-8", "replace")
    # Close frame (masked, empty payload).
    s.sendall(bytes([0x88, 0x80]) + os.urandom(4))
s.close()
print(json.dumps({
    "status": head_lines[0],
    "accept_ok": headers.get("sec-websocket-accept") == expected,
    "served_by": headers.get("x-served-by"),
    "reply": reply,
}), flush=True)
