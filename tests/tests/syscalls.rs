//! Programs the layer cannot see get the cluster's network too (seccomp user notification in
//! `mirrord exec`): Go built with and without cgo, a statically linked C program, and resolvers
//! that read `/etc/resolv.conf` themselves (Ruby's `Resolv`, bind9's `host`). Every check runs
//! the same program in the pod and under mirrord in the developer's namespace and compares.
//!
//! Needs root, the Go toolchain (`golang-go`), gcc with static glibc, `ruby` and `host`
//! (`bind9-host`): scripts/deps.sh installs them.

use mirrord_tests::{no_proxy, output_within, target_dir_bin, Cluster, ManagedChild};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(90);
const HELLO_BODY: &str = r#"body="payment-service: hello""#;

/// `mirrord exec -t pid/<pod> -- program args` in the dev namespace.
fn mirrord(c: &Cluster, program: &Path, args: &[&str]) -> Command {
    mirrord_with(c, None, program, args)
}

/// [`mirrord`] with a configuration (JSON, written to the workdir).
fn mirrord_with(c: &Cluster, config: Option<&str>, program: &Path, args: &[&str]) -> Command {
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.arg("exec")
        .arg("-t")
        .arg(format!("pid/{}", c.pod_pid()));
    if let Some(json) = config {
        let path = c.workdir().join("mirrord.json");
        std::fs::write(&path, json).unwrap();
        cmd.arg("-f").arg(path);
    }
    cmd.arg("--")
        .arg(program)
        .args(args)
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    no_proxy(&mut cmd);
    cmd
}

fn run(mut cmd: Command) -> Output {
    output_within(&mut cmd, TIMEOUT).unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed ({}): stdout {} stderr {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Where the programs are built: `target/<profile>/syscalls-programs`, shared by every test
/// process (Go's build cache is safe to share; each binary is built under a name of its own
/// and renamed into place, so concurrent builds of the same program never see half a file).
fn build_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = target_dir_bin("mirrord")
            .parent()
            .expect("the mirrord binary lives in the target dir")
            .join("syscalls-programs");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// `build` writes `partial`; the result is renamed to `name` in [`build_dir`].
fn built_into_place(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let out = build_dir().join(name);
    let partial = build_dir().join(format!("{name}.{}", std::process::id()));
    build(&partial);
    std::fs::rename(&partial, &out).unwrap();
    out
}

fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("programs")
}

/// `netcheck.go` built with cgo (dynamically linked: the layer is loaded, but Go's own
/// syscalls never reach it) or without (a static binary: no layer at all).
fn go_netcheck(cgo: bool) -> PathBuf {
    static BUILT: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
    BUILT[cgo as usize]
        .get_or_init(|| go_build("netcheck", cgo))
        .clone()
}

/// `httpserver.go`, built like [`go_netcheck`].
fn go_httpserver(cgo: bool) -> PathBuf {
    static BUILT: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
    BUILT[cgo as usize]
        .get_or_init(|| go_build("httpserver", cgo))
        .clone()
}

fn go_build(name: &str, cgo: bool) -> PathBuf {
    let file = format!("{name}-{}", if cgo { "dyn" } else { "static" });
    let out = built_into_place(&file, |partial| {
        let mut cmd = Command::new("go");
        cmd.arg("build")
            .arg("-o")
            .arg(partial)
            .arg(programs_dir().join(format!("{name}.go")))
            .env("CGO_ENABLED", if cgo { "1" } else { "0" })
            .env("GOCACHE", build_dir().join("gocache"))
            .env("GOPATH", build_dir().join("gopath"))
            // Standard library only: never the module proxy.
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod");
        ok(output_within(&mut cmd, Duration::from_secs(300)).unwrap());
    });
    let file = ok(run({
        let mut f = Command::new("file");
        f.arg(&out);
        f
    }));
    assert_eq!(
        file.contains("dynamically linked"),
        cgo,
        "linking of the Go build: {file}"
    );
    out
}

/// `netcheck.c` linked statically (`gcc -static`).
fn c_netcheck() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            built_into_place("netcheck-c", |partial| {
                let mut cmd = Command::new("gcc");
                cmd.arg("-static")
                    .arg("-O1")
                    .arg("-o")
                    .arg(partial)
                    .arg(programs_dir().join("netcheck.c"));
                ok(output_within(&mut cmd, Duration::from_secs(120)).unwrap());
            })
        })
        .clone()
}

/// `netcheck.c` linked dynamically: the layer is loaded and sees every call.
fn c_netcheck_dyn() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            built_into_place("netcheck-c-dyn", |partial| {
                let mut cmd = Command::new("gcc");
                cmd.arg("-O1")
                    .arg("-o")
                    .arg(partial)
                    .arg(programs_dir().join("netcheck.c"));
                ok(output_within(&mut cmd, Duration::from_secs(120)).unwrap());
            })
        })
        .clone()
}

/// Runs `cmd` (a [`mirrord`] command) with the supervisor's count of stopped calls logged, and
/// returns the program's stdout and the count by kind (`connect`, `open`, ...).
fn with_stopped_calls(mut cmd: Command) -> (String, std::collections::HashMap<String, u64>) {
    cmd.env("MIRRORD_LOG", "mirrord_server::seccomp=debug");
    let o = run(cmd);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let out = ok(o);
    let line = stderr
        .lines()
        .find_map(|l| {
            l.split_once("seccomp: stopped calls:")
                .map(|(_, rest)| rest)
        })
        .unwrap_or_else(|| panic!("no count of stopped calls in: {stderr}"));
    let counts = line
        .split_whitespace()
        .filter_map(|pair| {
            let (kind, n) = pair.split_once('=')?;
            // The log line may end in a terminal escape sequence.
            let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
            Some((kind.to_owned(), digits.parse().ok()?))
        })
        .collect::<std::collections::HashMap<_, _>>();
    for kind in ["connect", "getpeername", "open", "bind", "listen", "accept"] {
        assert!(counts.contains_key(kind), "{kind} missing in: {line}");
    }
    (out, counts)
}

/// The calls a program's layer already decided carry the session's mark and never stop at the
/// supervisor; the same program without the layer (linked statically) stops at it for each
/// connect and getpeername, and the layer's opens of the resolver files still stop there (the
/// supervisor serves the target's version), while its other opens do not.
#[test]
fn calls_the_layer_decided_do_not_stop_at_the_supervisor() {
    let c = Cluster::start().unwrap();
    let expected = "tcp peer=10.96.0.50:8080 body=payment-service: hello\n\
                    udp peer=10.96.0.50:9001 reply=ping-c\n\
                    udp-unconnected from=10.96.0.50:9001 reply=ping-c-unconnected\n";

    let (out, with_layer) = with_stopped_calls(mirrord(&c, &c_netcheck_dyn(), &[]));
    assert_eq!(out, expected);
    assert_eq!(
        (with_layer["connect"], with_layer["getpeername"]),
        (0, 0),
        "with the layer: {with_layer:?}"
    );

    let (out, without_layer) = with_stopped_calls(mirrord(&c, &c_netcheck(), &[]));
    assert_eq!(out, expected);
    // A TCP and a UDP connect, a getpeername of each.
    assert!(
        without_layer["connect"] >= 2 && without_layer["getpeername"] >= 2,
        "without the layer: {without_layer:?}"
    );

    // `cat` opens its one file through the layer: the resolver file stops (and is the
    // target's), another file does not. The loader's opens before the layer runs stop in both.
    let (resolv, served) = with_stopped_calls(mirrord(&c, Path::new("cat"), &["/etc/resolv.conf"]));
    assert_eq!(resolv, Cluster::RESOLV_CONF);
    let (_, other) = with_stopped_calls(mirrord(&c, Path::new("cat"), &["/etc/passwd"]));
    assert_eq!(
        served["open"],
        other["open"] + 1,
        "cat /etc/resolv.conf: {served:?}, cat /etc/passwd: {other:?}"
    );
}

/// The layer makes blocking calls (`accept`, `open`) as raw, marked system calls under
/// `mirrord exec`; `pthread_cancel` still ends a thread blocked in them, as in libc's.
#[test]
fn blocking_calls_the_layer_makes_stay_cancellation_points() {
    let c = Cluster::start().unwrap();
    let bin = built_into_place("cancel-c", |partial| {
        let mut cmd = Command::new("gcc");
        cmd.arg("-O1")
            .arg("-pthread")
            .arg("-o")
            .arg(partial)
            .arg(programs_dir().join("cancel.c"));
        ok(output_within(&mut cmd, Duration::from_secs(120)).unwrap());
    });
    let fifo = c.workdir().join("cancel.fifo");
    let fifo = fifo.to_str().expect("the workdir is a UTF-8 path");
    let (out, stopped) = with_stopped_calls(mirrord(&c, &bin, &[fifo]));
    assert_eq!(out, "accept cancelled\nopen cancelled\n");
    // The calls really were the layer's marked ones.
    assert_eq!(stopped["accept"], 0, "{stopped:?}");
}

const GO_ACTIONS: [&str; 12] = [
    "get=http://payment-service:8080/",
    "get=http://payment-service.payments:8080/",
    "get=http://payment-service.payments.svc.cluster.local:8080/",
    "get=http://10.96.0.50:8080/",
    "get=http://payment-service:8080/whoami",
    "lookup=payment-service",
    "lookup=payment-service.payments",
    "lookup=echo",
    "lookup=no-such-service",
    "udp=payment-service:9001",
    "udp=10.96.0.50:9001",
    "udpto=payment-service:9001",
];

/// What the pod itself sees, checked against known facts so that two identical failures can
/// never pass as a match.
fn check_pod_view(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), GO_ACTIONS.len(), "{out}");
    for line in &lines[..4] {
        assert!(line.contains("peer=10.96.0.50:8080 status=200"), "{out}");
        assert!(line.ends_with(HELLO_BODY), "{out}");
    }
    assert!(
        lines[4].ends_with(r#"body="payment-service: peer 10.244.0.10""#),
        "{out}"
    );
    assert_eq!(lines[5], "lookup=payment-service 10.96.0.50", "{out}");
    assert_eq!(
        lines[6], "lookup=payment-service.payments 10.96.0.50",
        "{out}"
    );
    assert_eq!(
        lines[8], "lookup=no-such-service error notfound=true",
        "{out}"
    );
    assert_eq!(
        lines[9], r#"udp=payment-service:9001 peer=10.96.0.50:9001 reply="ping-go""#,
        "{out}"
    );
    assert_eq!(
        lines[11], r#"udpto=payment-service:9001 from=10.96.0.50:9001 reply="ping-go-unconnected""#,
        "{out}"
    );
}

fn go_matches_the_pod(cgo: bool) {
    let c = Cluster::start().unwrap();
    let bin = go_netcheck(cgo);
    let in_pod = ok(run({
        let mut cmd = c.pod(&bin);
        cmd.args(GO_ACTIONS);
        cmd
    }));
    check_pod_view(&in_pod);
    let under_mirrord = ok(run(mirrord(&c, &bin, &GO_ACTIONS)));
    assert_eq!(under_mirrord, in_pod);
    // Without mirrord the developer's namespace reaches nothing of the cluster.
    let direct = ok(run({
        let mut cmd = c.dev(&bin);
        cmd.args(["get=http://10.96.0.50:8080/", "udp=10.96.0.50:9001"]);
        cmd
    }));
    assert!(!direct.contains(HELLO_BODY), "{direct}");
}

#[test]
fn go_with_cgo_matches_the_pod() {
    go_matches_the_pod(true);
}

#[test]
fn go_static_matches_the_pod() {
    go_matches_the_pod(false);
}

#[test]
fn static_c_program_reaches_the_cluster_by_ip_over_tcp_and_udp_connected_or_not() {
    let c = Cluster::start().unwrap();
    let bin = c_netcheck();
    let in_pod = ok(run(c.pod(&bin)));
    assert_eq!(
        in_pod,
        "tcp peer=10.96.0.50:8080 body=payment-service: hello\n\
         udp peer=10.96.0.50:9001 reply=ping-c\n\
         udp-unconnected from=10.96.0.50:9001 reply=ping-c-unconnected\n"
    );
    assert_eq!(ok(run(mirrord(&c, &bin, &[]))), in_pod);
    assert!(!run(c.dev(&bin)).status.success());
}

/// Resolvers of their own read the target's `/etc/resolv.conf` (its nameserver and search
/// list): Ruby's `Resolv` (the layer carries its datagrams; the file is the supervisor's) and
/// bind9's `host`.
#[test]
fn resolvers_of_their_own_resolve_like_the_pod() {
    let c = Cluster::start().unwrap();
    let cat = ok(run(mirrord(&c, Path::new("cat"), &["/etc/resolv.conf"])));
    assert_eq!(cat, Cluster::RESOLV_CONF);

    let ruby = r##"require "resolv"
%w[payment-service payment-service.payments].each do |n|
  puts "#{n} #{Resolv.getaddresses(n).sort.join(",")}"
end"##;
    let in_pod = ok(run({
        let mut cmd = c.pod("ruby");
        cmd.args(["-e", ruby]);
        cmd
    }));
    assert_eq!(
        in_pod,
        "payment-service 10.96.0.50\npayment-service.payments 10.96.0.50\n"
    );
    assert_eq!(
        ok(run(mirrord(&c, Path::new("ruby"), &["-e", ruby]))),
        in_pod
    );

    for name in ["payment-service", "payment-service.payments"] {
        let args = ["-W", "10", "-t", "A", name];
        let in_pod = ok(run({
            let mut cmd = c.pod("host");
            cmd.args(args);
            cmd
        }));
        assert!(in_pod.contains("has address 10.96.0.50"), "{in_pod}");
        assert_eq!(ok(run(mirrord(&c, Path::new("host"), &args))), in_pod);
    }
}

/// curl from the client namespace to the pod's port 80: (x-served-by, body).
fn curl_pod(c: &Cluster, path: &str, header: Option<&str>) -> (String, String) {
    let mut cmd = c.client("curl");
    no_proxy(&mut cmd).args(["-sS", "--max-time", "10", "-D", "-"]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("http://{}{path}", Cluster::POD_IP));
    let text = ok(run(cmd));
    let by = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-served-by")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (by, body)
}

/// The Go server under mirrord with `config`, once it listens (its `listen` returns when the
/// agent redirects the port).
fn go_server(c: &Cluster, config: &str, cgo: bool) -> ManagedChild {
    let bin = go_httpserver(cgo);
    let mut app = c
        .spawn(mirrord_with(c, Some(config), &bin, &["80"]))
        .unwrap();
    app.wait_line("listening", TIMEOUT).unwrap();
    app
}

#[test]
fn go_http_server_steals_the_pods_port() {
    for cgo in [false, true] {
        let c = Cluster::start().unwrap();
        let mut app = go_server(&c, r#"{"feature":{"network":{"incoming":"steal"}}}"#, cgo);
        assert_eq!(
            curl_pod(&c, "/hello", None),
            ("local-go".to_owned(), "go: GET /hello\n".to_owned()),
            "cgo: {cgo}"
        );
        // accept() shows the real client in the cluster, as for a program the layer handles.
        app.wait_line(
            &format!("request GET /hello peer={}", Cluster::CLIENT_IP),
            TIMEOUT,
        )
        .unwrap();
        assert!(!c.pod_requests().iter().any(|r| r.contains("/hello")));
    }
}

/// A server the layer sees only in part (raw `socket`/`bind`, libc's `listen`, `accept4` and
/// `getpeername`): the supervisor bound its socket, so those libc calls are left unmarked and
/// the supervisor still subscribes the pod's port and shows the real client.
#[test]
fn raw_bound_server_keeps_the_supervisors_answers() {
    let c = Cluster::start().unwrap();
    let bin = built_into_place("rawbind-c", |partial| {
        let mut cmd = Command::new("gcc");
        cmd.arg("-O1")
            .arg("-o")
            .arg(partial)
            .arg(programs_dir().join("rawbind.c"));
        ok(output_within(&mut cmd, Duration::from_secs(120)).unwrap());
    });
    let mut app = c
        .spawn(mirrord_with(
            &c,
            Some(r#"{"feature":{"network":{"incoming":"steal"}}}"#),
            &bin,
            &["80"],
        ))
        .unwrap();
    app.wait_line("listening", TIMEOUT).unwrap();
    assert_eq!(
        curl_pod(&c, "/raw", None),
        ("local-c".to_owned(), "raw-bind".to_owned())
    );
    app.wait_line(
        &format!("accept={0} getpeername={0}", Cluster::CLIENT_IP),
        TIMEOUT,
    )
    .unwrap();
}

#[test]
fn go_http_server_steals_by_header_filter() {
    let c = Cluster::start().unwrap();
    let config = r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice"}}}}}"#;
    let mut app = go_server(&c, config, false);
    assert_eq!(
        curl_pod(&c, "/alice", Some("x-user: alice")),
        ("local-go".to_owned(), "go: GET /alice\n".to_owned())
    );
    assert_eq!(
        curl_pod(&c, "/bob", Some("x-user: bob")),
        ("pod".to_owned(), "pod: GET /bob\n".to_owned())
    );
    app.wait_line("request GET /alice", TIMEOUT).unwrap();
    assert!(!app.stdout_lines().iter().any(|l| l.contains("/bob")));
}

#[test]
fn go_http_server_sees_mirrored_requests() {
    let c = Cluster::start().unwrap();
    let mut app = go_server(
        &c,
        r#"{"feature":{"network":{"incoming":"mirror"}}}"#,
        false,
    );
    assert_eq!(
        curl_pod(&c, "/mirrored", None),
        ("pod".to_owned(), "pod: GET /mirrored\n".to_owned())
    );
    app.wait_line("request GET /mirrored", TIMEOUT).unwrap();
}

/// The supervisor is transport-blind: through a Kubernetes agent (a Job reached over
/// `pods/portforward`, on the simulated API) the static Go client resolves and connects as well.
#[test]
fn go_static_reaches_the_cluster_through_a_kubernetes_agent() {
    use mirrord_tests::k8s::{SimCluster, SimOptions};
    let sim = SimCluster::start(SimOptions {
        agent_bin: Some(target_dir_bin("mirrord-agent")),
        ..SimOptions::default()
    })
    .unwrap();
    let bin = go_netcheck(false);
    let mut cmd = sim.dev_cmd(target_dir_bin("mirrord"));
    cmd.args([
        "exec",
        "-t",
        "deployment/payment-api",
        "-n",
        "payments",
        "--",
    ])
    .arg(&bin)
    .args([
        "get=http://payment-service:8080/",
        "lookup=payment-service.payments",
    ])
    .env("KUBECONFIG", sim.kubeconfig())
    .env("MIRRORD_RUNTIME_DIR", sim.workdir().join("run"));
    for var in [
        "MIRRORD_TARGET_NAMESPACE",
        "MIRRORD_KUBECONFIG",
        "MIRRORD_KUBE_CONTEXT",
    ] {
        cmd.env_remove(var);
    }
    no_proxy(&mut cmd);
    let out = ok(run(cmd));
    assert_eq!(
        out,
        format!(
            "get=http://payment-service:8080/ peer=10.96.0.50:8080 status=200 {HELLO_BODY}\n\
             lookup=payment-service.payments 10.96.0.50\n"
        )
    );
}
