// HTTP/2 cleartext (h2c, prior knowledge) server and client for the filtered-steal tests.
//
// server PORT NAME: answers every request with `x-served-by: NAME` and the body
//   `NAME: METHOD PATH\n`, then trailers `grpc-status: 0` and `x-trailer-by: NAME` (the shape of a
//   gRPC response, so routing must carry trailers); prints {"listening": PORT} once it listens.
// client URL COUNT INFLIGHT KINDS_JSON [SEED]: sends COUNT requests on ONE session, at most
//   INFLIGHT at a time; request i uses a kind ({method, path, headers, expect}) picked by a
//   seeded PRNG and the path `<path>/<i>`; prints one JSON summary line
//   {"sent", "ok", "by", "bad", "sessions"} (sessions: HTTP/2 connections opened).
"use strict";
const http2 = require("http2");

const [mode, ...rest] = process.argv.slice(2);

if (mode === "server") {
  const [port, name] = rest;
  const server = http2.createServer();
  server.on("stream", (stream, headers) => {
    const method = headers[":method"];
    const path = headers[":path"];
    const chunks = [];
    stream.on("data", (c) => chunks.push(c));
    stream.on("end", () => {
      stream.respond(
        { ":status": 200, "x-served-by": name, "content-type": "application/grpc" },
        { waitForTrailers: true },
      );
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0", "x-trailer-by": name }));
      stream.end(`${name}: ${method} ${path}\n`);
    });
    stream.on("error", () => {});
  });
  server.on("sessionError", () => {});
  server.listen(Number(port), "0.0.0.0", () => {
    process.stdout.write(JSON.stringify({ listening: server.address().port }) + "\n");
  });
} else if (mode === "client") {
  const [url, countS, inflightS, kindsJson, seedS] = rest;
  const count = Number(countS);
  const inflight = Number(inflightS);
  const kinds = JSON.parse(kindsJson);
  // mulberry32: a small seeded PRNG.
  let seed = Number(seedS || 7) >>> 0;
  const rand = () => {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const plan = [];
  for (let i = 0; i < count; i++) plan.push([i, kinds[Math.floor(rand() * kinds.length)]]);
  const result = { sent: 0, ok: 0, by: {}, bad: [], sessions: 1 };
  const session = http2.connect(url);
  session.on("error", (e) => {
    result.bad.push({ session_error: String(e) });
  });
  const timer = setTimeout(() => finish(), 60000);
  let next = 0;
  let done = 0;
  function finish() {
    clearTimeout(timer);
    process.stdout.write(JSON.stringify(result) + "\n");
    session.close();
    process.exit(0);
  }
  function record(i, kind, method, path, status, by, body, trailerBy) {
    const good =
      status === 200 &&
      by === kind.expect &&
      trailerBy === kind.expect &&
      body === `${kind.expect}: ${method} ${path}\n`;
    result.sent++;
    result.by[by] = (result.by[by] || 0) + 1;
    if (good) result.ok++;
    else if (result.bad.length < 10) result.bad.push({ i, kind, status, by, trailerBy, body: body.slice(0, 200) });
    done++;
    if (done === count) finish();
    else launch();
  }
  function launch() {
    if (next >= count) return;
    const [i, kind] = plan[next++];
    const method = kind.method || "GET";
    const path = `${kind.path.replace(/\/$/, "")}/${i}`;
    const headers = Object.assign({ ":method": method, ":path": path }, kind.headers || {});
    let req;
    try {
      req = session.request(headers, { endStream: !kind.body });
    } catch (e) {
      record(i, kind, method, path, 0, "error", String(e));
      return;
    }
    let status = 0;
    let by = "";
    let trailerBy = "";
    const chunks = [];
    let recorded = false;
    const once = (st, b, body) => {
      if (recorded) return;
      recorded = true;
      record(i, kind, method, path, st, b, body, trailerBy);
    };
    req.on("response", (h) => {
      status = h[":status"];
      by = String(h["x-served-by"] || "");
    });
    req.on("trailers", (t) => {
      trailerBy = String(t["x-trailer-by"] || "");
    });
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => once(status, by, Buffer.concat(chunks).toString()));
    req.on("error", (e) => once(0, "error", String(e)));
    if (kind.body) req.end(kind.body);
  }
  for (let k = 0; k < Math.min(inflight, count); k++) launch();
} else {
  process.stderr.write("usage: h2.js server PORT NAME | client URL COUNT INFLIGHT KINDS [SEED]\n");
  process.exit(2);
}
