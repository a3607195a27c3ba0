//! Outgoing traffic and cluster DNS, end to end: real programs in the developer's (`dev`)
//! namespace, started with `mirrord exec`, reach services that only the pod can reach.
//!
//! Each test builds its own cluster, so they run in parallel. Programs under test are curl,
//! the system Python (`/usr/bin/python3`: the `python3` on PATH may be a pyenv shim), Node and
//! a small tokio client (`src/bin/tokio_http_get.rs`), each exercising a different way of
//! resolving and connecting (glibc `getaddrinfo`, c-ares, blocking and non-blocking sockets,
//! epoll, threads, `fork`).

use mirrord_tests::{no_proxy, output_within, target_dir_bin, Cluster, ManagedChild};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The system Python.
const PY: &str = "/usr/bin/python3";
const NODE: &str = "node";
const HELLO: &str = "payment-service: hello\n";
/// Every form of payment-service's name that the pod's search list resolves.
const NAME_FORMS: [&str; 3] = [
    "payment-service",
    "payment-service.payments",
    "payment-service.payments.svc.cluster.local",
];

/// `mirrord exec -t pid/<pod> [extra] -- program args` in the dev namespace.
fn mirrord(c: &Cluster, extra: &[&str], program: &str, args: &[&str]) -> Command {
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.arg("exec")
        .arg("-t")
        .arg(format!("pid/{}", c.pod_pid()))
        .args(extra)
        .arg("--")
        .arg(program)
        .args(args)
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    no_proxy(&mut cmd);
    cmd
}

/// A Python program under mirrord.
fn python(c: &Cluster, extra: &[&str], code: &str) -> Command {
    mirrord(c, extra, PY, &["-c", code])
}

/// A Node program under mirrord.
fn node(c: &Cluster, extra: &[&str], code: &str) -> Command {
    mirrord(c, extra, NODE, &["-e", code])
}

/// Writes a configuration file into the cluster's workdir and returns `["-f", PATH]`.
fn config_file(c: &Cluster, name: &str, json: &str) -> [String; 2] {
    let path = c.workdir().join(name);
    std::fs::write(&path, json).unwrap();
    ["-f".to_string(), path.display().to_string()]
}

fn run(mut cmd: Command) -> Output {
    output_within(&mut cmd, TIMEOUT).unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed ({}): stdout {} stderr {}",
        o.status,
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn curl_reaches_a_cluster_service_by_every_name_form() {
    let c = Cluster::start().unwrap();
    for host in NAME_FORMS {
        let url = format!("http://{host}:8080/");
        let out = ok(run(mirrord(
            &c,
            &[],
            "curl",
            &["-sS", "-f", "--max-time", "20", &url],
        )));
        assert_eq!(out, HELLO, "{url}");
    }
    // Without mirrord the dev namespace cannot reach the service at all.
    let direct = run({
        let mut cmd = c.dev("curl");
        cmd.args([
            "-sS",
            "-f",
            "--max-time",
            "5",
            "http://payment-service:8080/",
        ]);
        cmd
    });
    assert!(!direct.status.success());
}

/// Python's urllib: `getaddrinfo` from CPython, then a blocking connect with a timeout (which
/// CPython implements as a non-blocking connect and `poll`).
#[test]
fn python_urllib_reaches_a_cluster_service_by_every_name_form() {
    let c = Cluster::start().unwrap();
    let code = r#"
import urllib.request
for host in ["payment-service", "payment-service.payments", "payment-service.payments.svc.cluster.local"]:
    with urllib.request.urlopen(f"http://{host}:8080/", timeout=20) as r:
        print(host, r.status, r.read().decode().strip())
"#;
    let out = ok(run(python(&c, &[], code)));
    let expected: String = NAME_FORMS
        .iter()
        .map(|h| format!("{h} 200 payment-service: hello\n"))
        .collect();
    assert_eq!(out, expected);
}

/// Node: undici's global `fetch` and `http.get` (libuv: `getaddrinfo` on the thread pool,
/// non-blocking connect on the event loop).
#[test]
fn node_fetch_and_http_get_reach_a_cluster_service_by_every_name_form() {
    let c = Cluster::start().unwrap();
    let code = r#"
const http = require('http');
const hosts = ['payment-service', 'payment-service.payments', 'payment-service.payments.svc.cluster.local'];
const get = url => new Promise((resolve, reject) => {
  const req = http.get(url, res => {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', d => body += d);
    res.on('end', () => resolve(`${res.statusCode} ${body.trim()}`));
  });
  req.setTimeout(20000, () => req.destroy(new Error('timeout')));
  req.on('error', reject);
});
(async () => {
  for (const h of hosts) {
    const r = await fetch(`http://${h}:8080/`, { signal: AbortSignal.timeout(20000) });
    console.log(`fetch ${h} ${r.status} ${(await r.text()).trim()}`);
  }
  for (const h of hosts) {
    console.log(`http.get ${h} ${await get(`http://${h}:8080/`)}`);
  }
  process.exit(0);
})().catch(e => { console.error(e); process.exit(1); });
"#;
    let out = ok(run(node(&c, &[], code)));
    let mut expected = String::new();
    for api in ["fetch", "http.get"] {
        for h in NAME_FORMS {
            expected += &format!("{api} {h} 200 payment-service: hello\n");
        }
    }
    assert_eq!(out, expected);
}

/// A Rust tokio client: `TcpStream::connect("name:port")` resolves with `getaddrinfo` on a
/// blocking thread and connects a non-blocking socket through epoll.
#[test]
fn tokio_client_reaches_a_cluster_service_by_every_name_form() {
    let c = Cluster::start().unwrap();
    let client = target_dir_bin("tokio_http_get");
    let targets: Vec<String> = NAME_FORMS.iter().map(|h| format!("{h}:8080/")).collect();
    let o = run(mirrord(&c, &[], client.to_str().unwrap(), &strs(&targets)));
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(ok(o), HELLO.repeat(3));
    // `peer_addr()` (getpeername) shows the service's cluster address.
    assert_eq!(
        stderr.matches("connected, peer 10.96.0.50:8080").count(),
        3,
        "{stderr}"
    );
}

const RESOLVE4: &str = r#"
require('dns').promises.resolve4('payment-service.payments.svc.cluster.local').then(
  a => console.log(JSON.stringify(a)),
  e => { console.log(`error ${e.code}`); process.exit(1); });
"#;

/// c-ares (Node's `dns.resolve*`) reads /etc/resolv.conf and talks UDP to the nameserver itself,
/// never calling `getaddrinfo`: the layer sends its port-53 datagrams to the pod's nameserver.
#[test]
fn node_dns_resolve4_asks_the_pod_nameserver() {
    let c = Cluster::start().unwrap();
    let out = ok(run(node(&c, &[], RESOLVE4)));
    assert_eq!(out, "[\"10.96.0.50\"]\n");
    assert!(
        c.dns_log()
            .contains("payment-service.payments.svc.cluster.local from 10.244.0.10"),
        "the query did not come from the pod: {}",
        c.dns_log()
    );

    // The dev namespace alone has no route to any nameserver.
    let mut direct = c.dev(NODE);
    direct.args(["-e", RESOLVE4]);
    let direct = run(direct);
    assert!(
        !direct.status.success() && stdout(&direct).starts_with("error "),
        "resolved without mirrord: {}",
        stdout(&direct)
    );
}

/// Looks up `no-such-service` and prints how it failed and how long it took.
const PY_NONAME: &str = r#"
import socket, sys, time
t = time.monotonic()
try:
    socket.getaddrinfo("no-such-service", 80)
    print("resolved")
except socket.gaierror as e:
    print("gaierror", "EAI_NONAME" if e.errno == socket.EAI_NONAME else e.errno)
print(f"{(time.monotonic() - t) * 1000:.0f}", file=sys.stderr)
"#;

const NODE_NONAME: &str = r#"
const t = process.hrtime.bigint();
require('dns').lookup('no-such-service', (e, a) => {
  console.log(e ? `error ${e.code}` : `resolved ${a}`);
  console.error(String((process.hrtime.bigint() - t) / 1000000n));
});
"#;

/// Milliseconds the script printed on stderr (its last line).
fn elapsed_ms(o: &Output) -> u64 {
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or_default();
    last.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no elapsed time in stderr: {err}"))
}

/// A missing name fails as it does in the pod itself (`EAI_NONAME` / `ENOTFOUND`, not a
/// temporary failure), and fast.
#[test]
fn unknown_name_fails_with_eai_noname_like_in_the_pod() {
    let c = Cluster::start().unwrap();
    for (program, code, expected) in [
        (PY, PY_NONAME, "gaierror EAI_NONAME\n"),
        (NODE, NODE_NONAME, "error ENOTFOUND\n"),
    ] {
        let flag = if program == PY { "-c" } else { "-e" };
        let mut in_pod = c.pod(program);
        in_pod.args([flag, code]);
        let in_pod = run(in_pod);
        assert_eq!(stdout(&in_pod), expected, "{program} in the pod namespace");

        let t = Instant::now();
        let mirrored = run(mirrord(&c, &[], program, &[flag, code]));
        let wall = t.elapsed();
        assert_eq!(
            stdout(&mirrored),
            stdout(&in_pod),
            "{program} under mirrord; stderr: {}",
            String::from_utf8_lossy(&mirrored.stderr)
        );
        let ms = elapsed_ms(&mirrored);
        assert!(ms < 3000, "{program}: the failed lookup took {ms} ms");
        assert!(
            wall < Duration::from_secs(10),
            "{program}: the run took {wall:?}"
        );
    }
}

/// Many forms of lookup through glibc's API (hints, services, flags, invalid names, the
/// `gethostbyname` family), each printed with its result or error code.
const PY_LOOKUPS: &str = r#"
import socket as S
F, T = S.AF_INET, S.SOCK_STREAM
cases = [
    ("payment-service", 80, 0, 0, 0, 0),
    ("payment-service", "http", 0, 0, S.IPPROTO_TCP, 0),
    ("payment-service", 53, 0, 0, S.IPPROTO_UDP, 0),
    ("payment-service", "http", 0, 0, 0, 0),
    ("payment-service", "domain", F, 0, 0, 0),
    ("payment-service", None, F, 0, 0, 0),
    ("payment-service", 80, F, 0, S.IPPROTO_SCTP, 0),
    ("payment-service", 80, F, 0, S.IPPROTO_ICMP, 0),
    ("payment-service", 80, F, T, S.IPPROTO_UDP, 0),
    ("payment-service", 80, F, S.SOCK_SEQPACKET, 0, 0),
    ("payment-service", "http", F, S.SOCK_DGRAM, 0, 0),
    ("payment-service", "no-such-port", 0, 0, 0, 0),
    ("payment-service", "http", 0, 0, 0, S.AI_NUMERICSERV),
    ("payment-service", 80, S.AF_INET6, 0, 0, 0),
    ("payment-service", 80, S.AF_INET6, T, 0, S.AI_V4MAPPED),
    ("payment-service", 80, 0, T, 0, S.AI_CANONNAME),
    ("payment-service.payments", None, 0, T, 0, S.AI_CANONNAME),
    ("echo", 80, 0, T, 0, S.AI_CANONNAME),
    ("PAYMENT-SERVICE.payments.svc.cluster.local.", 80, 0, T, 0, 0),
    ("kubernetes.default", 443, 0, T, 0, 0),
    ("10-244-0-10.payments.pod.cluster.local", 80, 0, T, 0, 0),
    ("no-such-service", 80, 0, 0, 0, 0),
    ("no-such-service.payments.svc.cluster.local", 80, 0, T, 0, 0),
    (b"a..b", 80, 0, 0, 0, 0),
    (b"x" * 70, 80, 0, 0, 0, 0),
]
for host, port, family, socktype, proto, flags in cases:
    try:
        r = S.getaddrinfo(host, port, family, socktype, proto, flags)
        print(host, port, [(f.name, getattr(t, "name", t), p, c, a) for f, t, p, c, a in r])
    except S.gaierror as e:
        print(host, port, family, socktype, proto, flags, "gaierror", e.errno)
for name in ["payment-service", "payment-service.payments", "echo", "no-such-service"]:
    try:
        print("gethostbyname_ex", S.gethostbyname_ex(name))
    except OSError as e:
        print("gethostbyname_ex", name, type(e).__name__, e.errno)
"#;

/// Lookups under mirrord give what they give in the pod itself, down to the error codes
/// (`EAI_NODATA` for a name without AAAA, `EAI_SOCKTYPE`, ...) and the canonical names.
#[test]
fn python_lookups_match_the_pod() {
    let c = Cluster::start().unwrap();
    let mut in_pod = c.pod(PY);
    in_pod.args(["-c", PY_LOOKUPS]);
    let expected = ok(run(in_pod));
    // The pod's answers are the real thing, not a string of errors.
    assert!(
        expected.contains("'payment-service.payments.svc.cluster.local', ('10.96.0.50', 80)"),
        "{expected}"
    );
    let out = ok(run(python(&c, &[], PY_LOOKUPS)));
    for (pod, mirrored) in expected.lines().zip(out.lines()) {
        assert_eq!(mirrored, pod, "(left: under mirrord, right: in the pod)");
    }
    assert_eq!(out.lines().count(), expected.lines().count(), "{out}");
}

/// Connecting to payment-service's closed port, blocking and non-blocking (`EINPROGRESS`, then
/// writable, then `SO_ERROR` = `ECONNREFUSED`, with `select` and with `poll`).
const PY_CLOSED_PORT: &str = r#"
import errno, select, socket
name = lambda e: errno.errorcode.get(e, str(e))
try:
    socket.create_connection(("payment-service", 8081))
    print("blocking: connected")
except ConnectionRefusedError:
    print("blocking: ConnectionRefusedError")
addr = socket.getaddrinfo("payment-service", 8081, socket.AF_INET, socket.SOCK_STREAM)[0][4]
for waiter in ("select", "poll"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    print(waiter, "connect_ex:", name(s.connect_ex(addr)))
    if waiter == "select":
        _, w, _ = select.select([], [s], [], 20)
        print(waiter, "writable:", bool(w))
    else:
        p = select.poll()
        p.register(s, select.POLLOUT)
        print(waiter, "ready:", bool(p.poll(20000)))
    print(waiter, "SO_ERROR:", name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    s.close()
"#;

#[test]
fn connecting_to_a_closed_port_is_refused() {
    let c = Cluster::start().unwrap();
    let expected = "blocking: ConnectionRefusedError\n\
                    select connect_ex: EINPROGRESS\n\
                    select writable: True\n\
                    select SO_ERROR: ECONNREFUSED\n\
                    poll connect_ex: EINPROGRESS\n\
                    poll ready: True\n\
                    poll SO_ERROR: ECONNREFUSED\n";
    // The kernel's own behaviour, in the pod namespace.
    let mut in_pod = c.pod(PY);
    in_pod.args(["-c", PY_CLOSED_PORT]);
    assert_eq!(ok(run(in_pod)), expected, "in the pod namespace");
    assert_eq!(ok(run(python(&c, &[], PY_CLOSED_PORT))), expected);

    let curl = run(mirrord(
        &c,
        &[],
        "curl",
        &["-sS", "--max-time", "20", "http://payment-service:8081/"],
    ));
    assert_eq!(
        curl.status.code(),
        Some(7),
        "curl: {}",
        String::from_utf8_lossy(&curl.stderr)
    );
}

/// The program sees the address it asked for as its peer, and the service sees the pod.
#[test]
fn getpeername_shows_the_cluster_address_and_the_service_sees_the_pod() {
    let c = Cluster::start().unwrap();
    let code = r#"
import socket
for timeout in (None, 20):  # blocking connect, and CPython's non-blocking connect + poll
    s = socket.create_connection(("payment-service", 8080), timeout=timeout)
    print("peer", s.getpeername())
    s.sendall(b"GET /whoami HTTP/1.1\r\nHost: payment-service\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    body = data.split(b"\r\n\r\n", 1)[1].decode().strip()
    ip, port = s.getsockname()
    print("whoami", body)
    print("matches sockname", body == f"payment-service: peer {ip}:{port}")
    s.close()
"#;
    let out = ok(run(python(&c, &[], code)));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    for round in lines.chunks(3) {
        assert_eq!(round[0], "peer ('10.96.0.50', 8080)", "{out}");
        assert!(
            round[1].starts_with("whoami payment-service: peer 10.244.0.10:"),
            "{out}"
        );
        assert_eq!(round[2], "matches sockname True", "{out}");
    }
}

/// A local HTTP server in the dev namespace on 127.0.0.1:`port`, serving `hello.txt`.
fn local_server(c: &Cluster, port: u16) -> ManagedChild {
    let dir: PathBuf = c.workdir().join("www");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "local: hello\n").unwrap();
    let port = port.to_string();
    let mut server = c
        .spawn_in(
            c.ns_dev(),
            PY,
            [
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
                dir.to_str().unwrap(),
                &port,
            ],
        )
        .unwrap();
    server
        .wait_line("Serving HTTP", Duration::from_secs(20))
        .unwrap();
    server
}

fn curl_args(url: &str) -> [&str; 5] {
    ["-sS", "-f", "--max-time", "20", url]
}

/// `filter.local`: listed destinations stay on the developer's machine, the rest still goes
/// through the pod.
#[test]
fn outgoing_filter_local_keeps_listed_destinations_local() {
    let c = Cluster::start().unwrap();
    let port = 18080;
    let _server = local_server(&c, port);
    let local_url = format!("http://127.0.0.1:{port}/hello.txt");

    for (name, rule) in [
        ("ip", "127.0.0.1".to_string()),
        ("port", format!("127.0.0.1:{port}")),
    ] {
        let json = format!(
            r#"{{"feature":{{"network":{{"outgoing":{{"filter":{{"local":["{rule}"]}}}}}}}}}}"#
        );
        let f = config_file(&c, &format!("local-{name}.json"), &json);
        let out = ok(run(mirrord(&c, &strs(&f), "curl", &curl_args(&local_url))));
        assert_eq!(out, "local: hello\n", "rule {rule}");
        let out = ok(run(mirrord(
            &c,
            &strs(&f),
            "curl",
            &curl_args("http://payment-service:8080/"),
        )));
        assert_eq!(out, HELLO, "rule {rule}");
    }

    // Without the filter 127.0.0.1 is the pod's loopback, where nothing listens on that port.
    let unfiltered = run(mirrord(&c, &[], "curl", &curl_args(&local_url)));
    assert_eq!(
        unfiltered.status.code(),
        Some(7),
        "reached the local server through the pod: {}",
        stdout(&unfiltered)
    );
}

/// Connects to `HOST PORT` (argv) and says whether an echo came back, or the errno.
const PY_ECHO: &str = r#"
import errno, socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    s.sendall(b"ping")
    print("echo", s.recv(16).decode())
except OSError as e:
    print("error", errno.errorcode.get(e.errno, e.errno))
"#;

fn py_echo(c: &Cluster, extra: &[&str], host: &str, port: &str) -> String {
    ok(run(mirrord(c, extra, PY, &["-c", PY_ECHO, host, port])))
}

/// `filter.remote` with a host name rule or a subnet:port rule: only listed destinations go
/// through the pod; the others stay in the dev namespace, which has no route to the cluster.
#[test]
fn outgoing_filter_remote_sends_only_listed_destinations_through_the_pod() {
    let c = Cluster::start().unwrap();
    // Without a filter the TCP echo is reachable: what the filters below take away.
    assert_eq!(py_echo(&c, &[], "10.96.0.50", "9000"), "echo ping\n");

    for (name, rule) in [("name", "payment-service"), ("subnet", "10.96.0.0/12:8080")] {
        let json = format!(
            r#"{{"feature":{{"network":{{"outgoing":{{"filter":{{"remote":["{rule}"]}}}}}}}}}}"#
        );
        let f = config_file(&c, &format!("remote-{name}.json"), &json);
        let out = ok(run(mirrord(
            &c,
            &strs(&f),
            "curl",
            &curl_args("http://payment-service:8080/"),
        )));
        assert_eq!(out, HELLO, "rule {rule}");
        assert_eq!(
            py_echo(&c, &strs(&f), "10.96.0.50", "9000"),
            "error ENETUNREACH\n",
            "rule {rule}"
        );
    }
}

/// 100 MiB through the pod arrive intact.
#[test]
fn bulk_download_arrives_intact() {
    let c = Cluster::start().unwrap();
    let expected = c.bulk_sha256();
    let file = c.workdir().join("download.bin");
    let t = Instant::now();
    ok(run(mirrord(
        &c,
        &[],
        "curl",
        &[
            "-sS",
            "-f",
            "--max-time",
            "50",
            "-o",
            file.to_str().unwrap(),
            "http://payment-service:8080/bytes",
        ],
    )));
    eprintln!("100 MiB in {:?}", t.elapsed());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), Cluster::BULK_SIZE);
    assert_eq!(sha256_of(&file), expected);
}

fn sha256_of(path: &Path) -> String {
    let out = mirrord_tests::run_ok(Command::new("sha256sum").arg(path)).unwrap();
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// 200 connections at once from one Node process, each its own socket (`agent: false`).
#[test]
fn node_200_concurrent_connections_all_complete() {
    let c = Cluster::start().unwrap();
    let code = r#"
const http = require('http');
const N = 200;
const one = () => new Promise((resolve, reject) => {
  const req = http.get({ host: 'payment-service', port: 8080, path: '/', agent: false }, res => {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', d => body += d);
    res.on('end', () => body === 'payment-service: hello\n' ? resolve() : reject(new Error(`${res.statusCode} ${body}`)));
  });
  req.setTimeout(30000, () => req.destroy(new Error('timeout')));
  req.on('error', reject);
});
Promise.allSettled(Array.from({ length: N }, one)).then(results => {
  const failed = results.filter(r => r.status === 'rejected').map(r => r.reason.code || r.reason.message);
  console.log(`ok ${N - failed.length}/${N}`);
  if (failed.length) console.log(`errors ${JSON.stringify([...new Set(failed)])}`);
  process.exit(failed.length ? 1 : 0);
});
"#;
    assert_eq!(ok(run(node(&c, &[], code))), "ok 200/200\n");
}

/// 200 connections at once from one Python process, one thread each, started together.
#[test]
fn python_200_concurrent_connections_all_complete() {
    let c = Cluster::start().unwrap();
    let code = r#"
import threading, urllib.request
N = 200
start = threading.Barrier(N)
results = [None] * N
def fetch(i):
    try:
        start.wait(timeout=30)
        with urllib.request.urlopen("http://payment-service:8080/", timeout=30) as r:
            results[i] = r.read().decode() == "payment-service: hello\n" or "bad body"
    except Exception as e:
        results[i] = repr(e)
threads = [threading.Thread(target=fetch, args=(i,)) for i in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=50)
ok = sum(1 for r in results if r is True)
print(f"ok {ok}/{N}")
errors = {r for r in results if r is not True}
if errors:
    print("errors", sorted(map(str, errors))[:5])
"#;
    assert_eq!(ok(run(python(&c, &[], code))), "ok 200/200\n");
}

/// UDP echo through the pod: `sendto` on an unconnected socket (`recvfrom` shows the service as
/// the sender), and `connect` + `send`/`recv`.
#[test]
fn udp_echo_through_the_pod_from_python_and_node() {
    let c = Cluster::start().unwrap();
    let py = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(b"ping-unconnected", ("payment-service", 9001))
data, peer = s.recvfrom(65535)
print("unconnected", data.decode(), peer)
s.close()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.connect(("payment-service", 9001))
s.send(b"ping-connected")
print("connected", s.recv(65535).decode(), s.getpeername())
s.close()
"#;
    assert_eq!(
        ok(run(python(&c, &[], py))),
        "unconnected ping-unconnected ('10.96.0.50', 9001)\n\
         connected ping-connected ('10.96.0.50', 9001)\n"
    );

    let js = r#"
const dgram = require('dgram');
setTimeout(() => { console.error('timeout'); process.exit(1); }, 10000).unref();
const echo = (connect) => new Promise((resolve, reject) => {
  const s = dgram.createSocket('udp4');
  s.on('error', reject);
  s.on('message', (msg, rinfo) => { s.close(); resolve(`${msg} ${rinfo.address}:${rinfo.port}`); });
  if (connect) {
    s.connect(9001, 'payment-service', () => s.send('ping-connected'));
  } else {
    s.send('ping-unconnected', 9001, 'payment-service');
  }
});
(async () => {
  console.log(`unconnected ${await echo(false)}`);
  console.log(`connected ${await echo(true)}`);
})().catch(e => { console.error(e); process.exit(1); });
"#;
    assert_eq!(
        ok(run(node(&c, &[], js))),
        "unconnected ping-unconnected 10.96.0.50:9001\n\
         connected ping-connected 10.96.0.50:9001\n"
    );
}

/// After `fork`, parent and child both reach the cluster. The child has its own control
/// connection (the session sees two processes join); a shared one would mix up the answers of
/// their concurrent requests.
#[test]
fn fork_parent_and_child_both_reach_the_cluster() {
    let c = Cluster::start().unwrap();
    let code = r#"
import os, urllib.request
def get(who, i):
    host = ["payment-service", "payment-service.payments", "payment-service.payments.svc.cluster.local"][i % 3]
    with urllib.request.urlopen(f"http://{host}:8080/", timeout=20) as r:
        return f"{who} {r.read().decode().strip()}"
print(get("before", 0), flush=True)
pid = os.fork()
who = "child" if pid == 0 else "parent"
try:
    results = [get(who, i) for i in range(5)]
    print(f"{who} ok" if len(set(results)) == 1 else results, flush=True)
except Exception as e:
    print(f"{who} failed: {e!r}", flush=True)
if pid == 0:
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
print("pids", os.getpid(), pid)
"#;
    let mut cmd = python(&c, &[], code);
    cmd.env("MIRRORD_LOG", "mirrord_server=info")
        .env("NO_COLOR", "1");
    let o = run(cmd);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let out = ok(o);
    let mut lines: Vec<&str> = out.lines().collect();
    let pids = lines.pop().unwrap_or_default();
    assert_eq!(
        lines.first(),
        Some(&"before payment-service: hello"),
        "{out}"
    );
    lines.sort();
    assert_eq!(
        lines,
        [
            "before payment-service: hello",
            "child exit 0",
            "child ok",
            "parent ok"
        ],
        "{out}"
    );
    let mut expected: Vec<String> = pids
        .strip_prefix("pids ")
        .unwrap_or_else(|| panic!("no pids in {out}"))
        .split(' ')
        .map(|p| format!("pid={p}"))
        .collect();
    let mut joined: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("process joined the session"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("pid=")))
        .map(str::to_owned)
        .collect();
    expected.sort();
    joined.sort();
    assert_eq!(joined, expected, "{stderr}");
}

/// A debuggee's connection to its IDE's debug adapter on loopback stays local (debugpy's
/// launcher names the port on its command line; `MIRRORD_IGNORE_DEBUGGER_PORTS` names others),
/// while the same connection from an ordinary program goes to the pod's loopback.
#[test]
fn debugger_connections_to_loopback_stay_local() {
    let c = Cluster::start().unwrap();
    let port = 47123u16;
    let _server = local_server(&c, port);
    let client = "import sys, urllib.request\nprint(urllib.request.urlopen('http://127.0.0.1:%s/hello.txt' % sys.argv[1], timeout=10).read().decode().strip())\n";
    for dir in ["debugpy", "plain"] {
        std::fs::create_dir_all(c.workdir().join(dir)).unwrap();
        std::fs::write(c.workdir().join(dir).join("launcher"), client).unwrap();
    }
    let launcher = |dir: &str| c.workdir().join(dir).join("launcher").display().to_string();
    let p = port.to_string();
    // debugpy's launcher: `.../debugpy/launcher PORT -- program`.
    let dbg = launcher("debugpy");
    let out = ok(run(mirrord(&c, &[], PY, &[&dbg, &p, "--", "app.py"])));
    assert_eq!(out.trim(), "local: hello");
    // The same program under another name reaches for the pod's loopback, where nothing listens.
    let plain = launcher("plain");
    let out = run(mirrord(&c, &[], PY, &[&plain, &p, "--", "app.py"]));
    assert!(!out.status.success(), "{}", stdout(&out));
    // Unless the port is named in the environment.
    let mut cmd = mirrord(&c, &[], PY, &[&plain, &p, "--", "app.py"]);
    cmd.env("MIRRORD_IGNORE_DEBUGGER_PORTS", format!("1000-1001,{port}"));
    assert_eq!(ok(run(cmd)).trim(), "local: hello");
}

/// `getent hosts` (glibc's `gethostbyname2`, IPv6 first, then IPv4) answers under mirrord exactly
/// as it does inside the pod, for a name that exists and for one that does not.
#[test]
fn getent_hosts_matches_the_pod() {
    let c = Cluster::start().unwrap();
    for name in [
        "payment-service",
        "payment-service.payments",
        "no-such-service",
    ] {
        let in_pod = run({
            let mut cmd = c.pod("getent");
            cmd.args(["hosts", name]);
            cmd
        });
        let with_mirrord = run(mirrord(&c, &[], "getent", &["hosts", name]));
        assert_eq!(with_mirrord.status.code(), in_pod.status.code(), "{name}");
        assert_eq!(stdout(&with_mirrord), stdout(&in_pod), "{name}");
    }
}

/// Reverse lookups of cluster addresses (`getnameinfo`, `gethostbyaddr(_r)`) answer under mirrord
/// as they do inside the pod: the PTR name, or the numeric form / the right error when none.
#[test]
fn reverse_lookups_match_the_pod() {
    let c = Cluster::start().unwrap();
    let script = r#"
import socket
def show(what, f):
    try:
        print(what, f())
    except OSError as e:
        print(what, type(e).__name__, e.errno)
show('gethostbyaddr', lambda: socket.gethostbyaddr('10.96.0.50')[0])
show('getnameinfo', lambda: socket.getnameinfo(('10.96.0.50', 8080), 0))
show('getnameinfo nofqdn', lambda: socket.getnameinfo(('10.96.0.50', 8080), socket.NI_NOFQDN))
show('unknown', lambda: socket.getnameinfo(('10.96.0.77', 80), 0))
show('unknown namereqd', lambda: socket.getnameinfo(('10.96.0.77', 80), socket.NI_NAMEREQD))
show('unknown gethostbyaddr', lambda: socket.gethostbyaddr('10.96.0.77'))
"#;
    let in_pod = ok(run({
        let mut cmd = c.pod(PY);
        cmd.args(["-c", script]);
        cmd
    }));
    let with_mirrord = ok(run(mirrord(&c, &[], PY, &["-c", script])));
    assert!(
        in_pod.contains("gethostbyaddr payment-service.payments.svc.cluster.local"),
        "{in_pod}"
    );
    assert_eq!(with_mirrord, in_pod);
    // getent uses gethostbyaddr for addresses.
    let in_pod = run({
        let mut cmd = c.pod("getent");
        cmd.args(["hosts", "10.96.0.50"]);
        cmd
    });
    let with_mirrord = run(mirrord(&c, &[], "getent", &["hosts", "10.96.0.50"]));
    assert_eq!(stdout(&with_mirrord), stdout(&in_pod));
}

/// Node (libuv) closes sockets with a raw `close` syscall the layer never sees, so descriptor
/// numbers come back while the layer still knows them: 100 connections one after the other, each
/// on a fresh socket that reuses the last one's number, must all work.
#[test]
fn node_sequential_connections_reuse_descriptors() {
    let c = Cluster::start().unwrap();
    let code = r#"
const http = require('http');
const get = () => new Promise((resolve, reject) => {
  const req = http.get({ host: 'payment-service', port: 8080, path: '/', agent: false }, res => {
    let body = '';
    res.on('data', d => body += d);
    res.on('end', () => resolve(body));
  });
  req.setTimeout(30000, () => req.destroy(new Error('timeout')));
  req.on('error', reject);
});
(async () => {
  let ok = 0;
  for (let i = 0; i < 100; i++) {
    try { if ((await get()) === 'payment-service: hello\n') ok++; } catch (e) { console.log(`error ${i}: ${e.code || e.message}`); }
  }
  console.log(`ok ${ok}/100`);
})();
"#;
    assert_eq!(ok(run(node(&c, &[], code))), "ok 100/100\n");
}

/// The session's own data listeners (the relay a remote agent needs, kept on with
/// `MIRRORD_SESSION_RELAY=1`) carry flows as well as the agent's direct path: a 100 MiB download
/// intact, a refused port refused, and the traffic still comes from the pod.
#[test]
fn the_session_relay_path_carries_flows_too() {
    let c = Cluster::start().unwrap();
    let expected = c.bulk_sha256();
    let file = c.workdir().join("relayed.bin");
    let script = format!(
        r#"
import socket, subprocess, urllib.request
print(urllib.request.urlopen('http://payment-service:8080/whoami', timeout=20).read().decode().strip())
try:
    socket.create_connection(('payment-service', 8081), timeout=10)
except ConnectionRefusedError:
    print('refused')
subprocess.run(['curl', '-sS', '-f', '-o', '{}', 'http://payment-service:8080/bytes'], check=True)
"#,
        file.display()
    );
    let mut cmd = mirrord(&c, &[], PY, &["-c", &script]);
    cmd.env("MIRRORD_SESSION_RELAY", "1");
    let out = ok(run(cmd));
    assert!(
        out.starts_with("payment-service: peer 10.244.0.10:"),
        "{out}"
    );
    assert!(out.contains("refused"), "{out}");
    assert_eq!(sha256_of(&file), expected);
}

/// A half-close travels through the pod: the program shuts down its sending side, the echo
/// service sees the end, sends everything back and closes; the program reads it all to EOF.
#[test]
fn half_close_reaches_the_service() {
    let c = Cluster::start().unwrap();
    let script = r#"
import socket
s = socket.create_connection(('payment-service', 9000), timeout=20)
data = b'x' * 300000
s.sendall(data)
s.shutdown(socket.SHUT_WR)
got = b''
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
print(len(got), got == data)
"#;
    assert_eq!(
        ok(run(mirrord(&c, &[], PY, &["-c", script]))).trim(),
        "300000 True"
    );
}
