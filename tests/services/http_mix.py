"""HTTP/1.1 load client for the filtered-steal tests: sends COUNT requests over CONNS keep-alive
connections and checks that each one was answered by the side the test expects.

usage: http_mix.py HOST PORT COUNT CONNS KINDS_JSON [--seed N]

KINDS_JSON is a list of request kinds: {"method", "path", "headers": {..}, "expect"}. Request i
uses a kind picked by a seeded PRNG and the path `<path>/<i>`, so every answer is tied to its
own request: it must carry `x-served-by: <expect>` and the body `<expect>: <METHOD> <path>/<i>`.
Prints one JSON summary line: {"sent", "ok", "by": {served_by: n}, "bad": [first mismatches],
"connects": n} where connects counts TCP connections opened (CONNS when keep-alive held).
"""

import argparse
import http.client
import json
import random
import sys
import threading

p = argparse.ArgumentParser()
p.add_argument("host")
p.add_argument("port", type=int)
p.add_argument("count", type=int)
p.add_argument("conns", type=int)
p.add_argument("kinds")
p.add_argument("--seed", type=int, default=7)
a = p.parse_args()

kinds = json.loads(a.kinds)
rng = random.Random(a.seed)
plan = [(i, rng.choice(kinds)) for i in range(a.count)]

lock = threading.Lock()
result = {"sent": 0, "ok": 0, "by": {}, "bad": [], "connects": 0}


class CountingConnection(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        with lock:
            result["connects"] += 1


def worker(items):
    conn = CountingConnection(a.host, a.port, timeout=20)
    for i, kind in items:
        path = "%s/%d" % (kind["path"].rstrip("/"), i)
        method = kind.get("method", "GET")
        body = kind.get("body")
        headers = dict(kind.get("headers", {}))
        try:
            conn.request(method, path, body=body.encode() if body else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read().decode("utf-8", "replace")
            by = resp.getheader("x-served-by", "")
            status = resp.status
        except Exception as e:  # noqa: BLE001 - every failure is reported
            by, data, status = "error", repr(e), 0
            conn.close()
        expect = kind["expect"]
        good = status == 200 and by == expect and data == "%s: %s %s\n" % (expect, method, path)
        with lock:
            result["sent"] += 1
            result["by"][by] = result["by"].get(by, 0) + 1
            if good:
                result["ok"] += 1
            elif len(result["bad"]) < 10:
                result["bad"].append({"i": i, "kind": kind, "status": status, "by": by,
                                      "body": data[:200]})
    conn.close()


threads = [threading.Thread(target=worker, args=(plan[k::a.conns],)) for k in range(a.conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sys.stdout.write(json.dumps(result) + "\n")
