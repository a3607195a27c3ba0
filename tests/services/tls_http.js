// HTTP server for the HTTPS-steal tests: HTTP/1.1 and HTTP/2 on one port, websockets too.
//
// usage: tls_http.js PORT NAME [CERT KEY [OTHER_NAME OTHER_CERT OTHER_KEY]]
// - with CERT and KEY: TLS with ALPN h2 and http/1.1 (the pod's HTTPS server); a client whose
//   SNI is OTHER_NAME gets OTHER_CERT instead (a name the first certificate does not cover);
// - without: plain HTTP/1.1 and HTTP/2 prior knowledge (h2c), told apart by the first bytes
//   (the program that gets decrypted requests).
// With CLIENT_CA set (a CA file), the TLS server requires client certificates from that CA.
// Every answer carries `x-served-by: NAME` and the body `NAME: METHOD PATH\n`, then trailers
// `grpc-status: 0` and `x-trailer-by: NAME` (gRPC's shape). A websocket upgrade is answered
// and every text frame echoed back as `NAME echo: TEXT`. Each request is printed as one JSON
// line ({path, method, headers, http}), each failed TLS handshake as {"tls_error": CODE};
// {"listening": PORT} once it listens.
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const http = require("http");
const http2 = require("http2");
const net = require("net");
const { Duplex } = require("stream");
const tls = require("tls");

const [portS, name, cert, key, otherName, otherCert, otherKey] = process.argv.slice(2);

function answer(req, res) {
  process.stdout.write(
    JSON.stringify({ path: req.url, method: req.method, headers: req.headers, http: req.httpVersion }) + "\n",
  );
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const headers = { "x-served-by": name, "content-type": "text/plain" };
    if (req.httpVersion === "1.1") headers["trailer"] = "grpc-status, x-trailer-by";
    res.writeHead(200, headers);
    res.addTrailers({ "grpc-status": "0", "x-trailer-by": name });
    res.end(`${name}: ${req.method} ${req.url}\n`);
  });
}

function websocket(req, socket, head) {
  process.stdout.write(
    JSON.stringify({ path: req.url, method: req.method, headers: req.headers, http: req.httpVersion }) + "\n",
  );
  const accept = crypto
    .createHash("sha1")
    .update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    .digest("base64");
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept}\r\nx-served-by: ${name}\r\n\r\n`,
  );
  let buf = head;
  socket.on("data", (d) => {
    buf = Buffer.concat([buf, d]);
    // Short masked frames only (what ws_client.py sends).
    while (buf.length >= 6) {
      const op = buf[0] & 0x0f;
      const len = buf[1] & 0x7f;
      if (buf.length < 6 + len) return;
      const mask = buf.subarray(2, 6);
      const payload = Buffer.from(buf.subarray(6, 6 + len).map((b, i) => b ^ mask[i % 4]));
      buf = buf.subarray(6 + len);
      if (op === 8) {
        socket.end();
        return;
      }
      const reply = Buffer.from(`${name} echo: ${payload.toString()}`);
      socket.write(Buffer.concat([Buffer.from([0x81, reply.length]), reply]));
    }
  });
  socket.on("error", () => {});
}

const h1 = http.createServer(answer);
h1.on("upgrade", websocket);
const h2 = http2.createServer();
h2.on("request", answer);
h2.on("sessionError", () => {});

let server;
if (cert) {
  const contexts = {};
  if (otherName) {
    contexts[otherName] = tls.createSecureContext({
      cert: fs.readFileSync(otherCert),
      key: fs.readFileSync(otherKey),
    });
  }
  server = tls.createServer({
    cert: fs.readFileSync(cert),
    key: fs.readFileSync(key),
    ALPNProtocols: ["h2", "http/1.1"],
    SNICallback: (servername, cb) => cb(null, contexts[servername]),
    ...(process.env.CLIENT_CA
      ? { requestCert: true, rejectUnauthorized: true, ca: fs.readFileSync(process.env.CLIENT_CA) }
      : {}),
  });
  server.on("secureConnection", (socket) => {
    socket.on("error", () => {});
    if (socket.alpnProtocol === "h2") h2.emit("connection", socket);
    else h1.emit("connection", socket);
  });
  server.on("tlsClientError", (e) => {
    process.stdout.write(JSON.stringify({ tls_error: String(e.code || e) }) + "\n");
  });
} else {
  // The h2 session reads a socket's handle directly, past bytes put back with unshift: give it
  // a stream that yields the sniffed bytes first instead.
  const withPrefix = (socket, first) => {
    const stream = new Duplex({
      read() {
        socket.resume();
      },
      write(chunk, encoding, cb) {
        socket.write(chunk, encoding, cb);
      },
      final(cb) {
        socket.end();
        cb();
      },
      destroy(err, cb) {
        socket.destroy();
        cb(err);
      },
    });
    stream.push(first);
    socket.on("data", (c) => {
      if (!stream.push(c)) socket.pause();
    });
    socket.on("end", () => stream.push(null));
    socket.on("close", () => stream.destroy());
    return stream;
  };
  server = net.createServer((socket) => {
    socket.on("error", () => {});
    socket.once("data", (first) => {
      if (first.subarray(0, 4).toString() === "PRI ") {
        h2.emit("connection", withPrefix(socket, first));
        return;
      }
      socket.pause();
      socket.unshift(first);
      h1.emit("connection", socket);
      socket.resume();
    });
  });
}
server.listen(Number(portS), "0.0.0.0", () => {
  process.stdout.write(JSON.stringify({ listening: server.address().port }) + "\n");
});
