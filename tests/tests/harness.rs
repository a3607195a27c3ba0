//! Self-test of the simulated cluster (no mirrord involved): each test builds its own cluster.
//! Needs root. All traffic stays inside the cluster's namespaces.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mirrord_tests::{run_ok, Cluster};

const PY: &str = "/usr/bin/python3";

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn stdout(cmd: &mut Command) -> String {
    run_ok(cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

fn start() -> Cluster {
    let t = Instant::now();
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("Cluster::start: {e:#}"));
    eprintln!("cluster {} started in {:?}", cluster.id(), t.elapsed());
    cluster
}

#[test]
fn client_reaches_pod_http() {
    let c = start();
    let out = stdout(c.client("curl").args([
        "-s",
        "--max-time",
        "5",
        "-D",
        "-",
        "http://10.244.0.10/hello",
    ]));
    assert!(
        out.to_ascii_lowercase().contains("x-served-by: pod"),
        "{out}"
    );
    assert!(out.ends_with("pod: GET /hello\n"), "{out}");

    // Any method, with a body that is read and discarded (keep-alive stays in sync).
    let out = stdout(c.client("curl").args([
        "-s",
        "--max-time",
        "5",
        "-X",
        "PATCH",
        "--data-binary",
        "some body",
        "http://10.244.0.10/a?b=1",
        "http://10.244.0.10/second",
    ]));
    assert_eq!(out, "pod: PATCH /a?b=1\npod: PATCH /second\n");
    assert_eq!(
        c.pod_requests(),
        ["GET /hello", "PATCH /a?b=1", "PATCH /second"]
    );
}

#[test]
fn pod_pid_is_in_the_pod_namespace_with_cluster_resolv_conf() {
    let c = start();
    let pid = c.pod_pid();
    let pod_ns = std::fs::metadata(Path::new("/run/netns").join(c.ns_pod())).unwrap();
    let pid_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(pod_ns.ino(), pid_ns.ino());
    // What an agent reads to resolve like the pod.
    let resolv = std::fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf")).unwrap();
    assert_eq!(resolv, Cluster::RESOLV_CONF);
}

#[test]
fn pod_resolves_service_names() {
    let c = start();
    for name in [
        "payment-service",
        "payment-service.payments",
        "payment-service.payments.svc.cluster.local",
    ] {
        let out =
            stdout(
                c.pod("curl")
                    .args(["-sf", "--max-time", "5", &format!("http://{name}:8080/")]),
            );
        assert_eq!(out, "payment-service: hello\n", "{name}");
    }
    let out = stdout(c.pod("getent").args(["hosts", Cluster::POD_FQDN]));
    assert!(out.starts_with("10.244.0.10 "), "{out}");
    let out = stdout(c.pod("getent").args(["hosts", "echo"]));
    assert!(out.starts_with("10.96.0.50 "), "{out}");
    // The connection really comes from the pod's address.
    let out = stdout(c.pod("curl").args([
        "-sf",
        "--max-time",
        "5",
        "http://payment-service:8080/whoami",
    ]));
    assert!(
        out.starts_with("payment-service: peer 10.244.0.10:"),
        "{out}"
    );
    assert!(c
        .dns_log()
        .contains("query[A] payment-service.payments.svc.cluster.local"));
}

#[test]
fn unknown_names_are_nxdomain_quickly() {
    let c = start();
    let script = r#"
import socket, sys, time
for name in ("no-such-service", "no-such-service.payments", "example.invalid.", "example.com"):
    t = time.monotonic()
    try:
        socket.getaddrinfo(name, 80)
        sys.exit(f"{name} resolved")
    except socket.gaierror as e:
        took = time.monotonic() - t
        if e.errno != socket.EAI_NONAME:
            sys.exit(f"{name}: errno {e.errno} ({e}), expected EAI_NONAME")
        if took > 2:
            sys.exit(f"{name}: took {took:.2f}s")
print("ok")
"#;
    let t = Instant::now();
    let out = stdout(c.pod(PY).args(["-c", script]));
    assert_eq!(out.trim(), "ok");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    let out = output(c.pod("getent").args(["ahosts", "no-such-service"]));
    // getent: exit 2 = "key not found" (not a resolver failure).
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn dev_cannot_reach_the_cluster() {
    let c = start();
    let t = Instant::now();
    let out = output(
        c.dev("curl")
            .args(["-s", "--max-time", "2", "http://10.96.0.50:8080/"]),
    );
    assert!(!out.status.success(), "{out:?}");
    // 7 = couldn't connect (network unreachable), immediately, not a timeout.
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(2));

    let out = output(c.dev("getent").args(["hosts", "payment-service"]));
    assert!(!out.status.success(), "{out:?}");

    // Loopback only, no route at all (ip reads netlink; no traffic involved).
    let routes =
        stdout(Command::new("ip").args(["-n", c.ns_dev(), "-4", "route", "show", "table", "all"]));
    assert!(
        routes.lines().all(|l| l.contains("dev lo")),
        "dev has routes: {routes}"
    );
    for ns in c.namespaces() {
        let default = stdout(Command::new("ip").args(["-n", ns, "route", "show", "default"]));
        assert!(default.trim().is_empty(), "{ns} has a default route");
    }
}

#[test]
fn svc_bulk_udp_echo_and_closed_port() {
    let c = start();
    let dest = c.workdir().join("download.bin");
    let t = Instant::now();
    let out = stdout(c.pod("curl").args([
        "-sf",
        "--max-time",
        "60",
        "-o",
        dest.to_str().unwrap(),
        "-w",
        "%{size_download}",
        "http://payment-service:8080/bytes",
    ]));
    eprintln!("100 MiB download: {:?}", t.elapsed());
    assert_eq!(out, Cluster::BULK_SIZE.to_string());
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), Cluster::BULK_SIZE);
    // The service created the blob on that first request; the harness reads the same digest.
    let sha = c.bulk_sha256();
    let sum = stdout(Command::new("sha256sum").arg(&dest));
    assert_eq!(sum.split_whitespace().next(), Some(sha.as_str()));

    let script = r#"
import errno, socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
u.sendto(b"ping-udp", ("payment-service", 9001))
data, peer = u.recvfrom(100)
assert data == b"ping-udp" and peer == ("10.96.0.50", 9001), (data, peer)
t = socket.create_connection(("payment-service", 9000), timeout=2)
t.sendall(b"ping-tcp")
t.shutdown(socket.SHUT_WR)
got = b""
while chunk := t.recv(100):
    got += chunk
assert got == b"ping-tcp", got
try:
    socket.create_connection(("payment-service", 8081), timeout=2)
    sys.exit("8081 accepted a connection")
except ConnectionRefusedError:
    pass
print("ok")
"#;
    let out = stdout(c.pod(PY).args(["-c", script]));
    assert_eq!(out.trim(), "ok");
}

#[test]
fn two_clusters_coexist_and_are_removed() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(start);
        let b = s.spawn(start);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.id(), b.id());
    for c in [&a, &b] {
        let out = stdout(
            c.client("curl")
                .args(["-sf", "--max-time", "5", "http://10.244.0.10/x"]),
        );
        assert_eq!(out, "pod: GET /x\n");
        let out =
            stdout(
                c.pod("curl")
                    .args(["-sf", "--max-time", "5", "http://payment-service:8080/"]),
            );
        assert_eq!(out, "payment-service: hello\n");
    }
    // Each pod sees only its own cluster's traffic.
    assert_eq!(a.pod_requests(), ["GET /x"]);
    assert_eq!(b.pod_requests(), ["GET /x"]);

    let names: Vec<String> = a
        .namespaces()
        .into_iter()
        .chain(b.namespaces())
        .map(str::to_string)
        .collect();
    let pids = [a.pod_pid(), b.pod_pid()];
    let dirs = [a.workdir().to_path_buf(), b.workdir().to_path_buf()];
    drop(a);
    drop(b);

    let list = stdout(Command::new("ip").args(["netns", "list"]));
    for ns in &names {
        assert!(
            !list.split_whitespace().any(|n| n == ns),
            "{ns} left behind: {list}"
        );
        assert!(
            !Path::new("/etc/netns").join(ns).exists(),
            "/etc/netns/{ns}"
        );
    }
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pod pid {pid} alive"
        );
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn spawned_children_are_killed_with_their_guard() {
    let c = start();
    let mut child = c
        .spawn_in(
            c.ns_pod(),
            PY,
            ["-c", "import time; print('up', flush=True); time.sleep(60)"],
        )
        .unwrap();
    child.wait_line("up", Duration::from_secs(10)).unwrap();
    let pid = child.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(child);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    // A child still held when the cluster drops is killed by the cluster.
    let mut child = c
        .spawn_in(
            c.ns_dev(),
            PY,
            ["-c", "import time; print('up', flush=True); time.sleep(60)"],
        )
        .unwrap();
    child.wait_line("up", Duration::from_secs(10)).unwrap();
    drop(c);
    assert!(child
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .is_some());
}

#[test]
fn pod_and_service_take_200_concurrent_connections() {
    let c = start();
    // 200 connections opened at once, each sending two keep-alive requests; bounded by
    // socket timeouts.
    let script = r#"
import socket, sys, threading
N = 200
def run(host, port, path, expect, errors):
    try:
        s = socket.create_connection((host, port), timeout=10)
        s.settimeout(10)
        barrier.wait(timeout=10)
        for _ in range(2):
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            buf = b""
            while expect not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError(f"eof after {buf!r}")
                buf += chunk
        s.close()
    except Exception as e:
        errors.append(repr(e))
for host, port, path, expect in (("10.244.0.10", 80, "/c", b"pod: GET /c\n"),
                                 ("10.96.0.50", 8080, "/", b"payment-service: hello\n")):
    barrier = threading.Barrier(N)
    errors = []
    threads = [threading.Thread(target=run, args=(host, port, path, expect, errors)) for _ in range(N)]
    for t in threads: t.start()
    for t in threads: t.join(30)
    if errors:
        sys.exit(f"{host}:{port}: {len(errors)} failed: {errors[:3]}")
print("ok")
"#;
    let out = stdout(c.client(PY).args(["-c", script]));
    assert_eq!(out.trim(), "ok");
    assert_eq!(c.pod_requests().len(), 400);
}

#[test]
fn cleanup_happens_when_a_test_panics() {
    let names = std::sync::Mutex::new(Vec::<String>::new());
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            let c = start();
            names
                .lock()
                .unwrap()
                .extend(c.namespaces().map(str::to_string));
            panic!("deliberate panic with cluster {} alive", c.id());
        })
        .join()
    });
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 6);
    let list = stdout(Command::new("ip").args(["netns", "list"]));
    for ns in &names {
        assert!(
            !list.split_whitespace().any(|n| n == ns),
            "{ns} left: {list}"
        );
    }
}
