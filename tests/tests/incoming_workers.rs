//! Several processes of one session listening on the same pod port under steal: pre-fork
//! servers with `SO_REUSEPORT` workers (Python) and Node's `cluster` module. Every request is
//! answered by a worker, more than one worker gets requests, and once the program ends no
//! redirect rule is left in the pod.
//!
//! Traffic is sent from the `client` namespace only; the program runs under `mirrord exec` in
//! `dev`.

use mirrord_tests::{no_proxy, output_within, run_ok, target_dir_bin, Cluster, ManagedChild};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
/// The system Python (the `python3` on PATH may be a pyenv shim).
const PY: &str = "/usr/bin/python3";
const WORKERS: usize = 4;
/// Requests sent, each on a connection of its own (so the kernel or the session may pick
/// another worker every time).
const REQUESTS: usize = 40;

fn service(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("services")
        .join(name)
}

/// `mirrord exec -t pid/<pod>` with an unfiltered steal, in the dev namespace.
fn mirrord_steal(c: &Cluster, program: &str, args: &[&str]) -> Command {
    let cfg = c.workdir().join("steal.json");
    std::fs::write(&cfg, r#"{"feature":{"network":{"incoming":"steal"}}}"#).unwrap();
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.args(["exec", "-t", &format!("pid/{}", c.pod_pid()), "-f"])
        .arg(&cfg)
        .arg("--")
        .arg(program)
        .args(args)
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    no_proxy(&mut cmd);
    cmd
}

/// x-served-by of a GET of the pod's port 80 from the client namespace (a new connection).
fn served_by(c: &Cluster, path: &str) -> String {
    let mut cmd = c.client("curl");
    no_proxy(&mut cmd).args(["-sS", "--max-time", "10", "-D", "-"]);
    cmd.arg(format!("http://{}{path}", Cluster::POD_IP));
    let out = output_within(&mut cmd, WAIT).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{path}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-served-by")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Chains `MIRRORD_<id>` in the pod's nat table and nft tables `mirrord_<id>`.
fn agent_rules(c: &Cluster) -> Vec<String> {
    let ipt = run_ok(c.pod("iptables-save").args(["-t", "nat"])).unwrap();
    let nft = run_ok(c.pod("nft").args(["list", "tables"])).unwrap_or_default();
    ipt.lines()
        .chain(nft.lines())
        .filter(|l| l.contains("MIRRORD_") || l.contains("mirrord_"))
        .map(str::to_owned)
        .collect()
}

fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Sends [`REQUESTS`] requests and checks that workers answered all of them, and more than one
/// worker had some; then ends the program and checks that the pod serves with no rule left.
fn check_workers(c: &Cluster, mut app: ManagedChild) {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..REQUESTS {
        *by.entry(served_by(c, &format!("/w/{i}"))).or_default() += 1;
    }
    eprintln!("answered by: {by:?}");
    assert!(
        by.keys().all(|k| k.starts_with("worker-")),
        "requests not answered by a worker: {by:?}; program: {}",
        app.stderr_tail(20)
    );
    assert!(by.len() > 1, "only one worker got requests: {by:?}");
    // SIGTERM to the program's group: the workers and mirrord end; the session removes its
    // rules on the way out.
    app.signal(libc::SIGTERM).unwrap();
    assert!(
        app.wait_timeout(WAIT).unwrap().is_some(),
        "the program did not end"
    );
    assert!(
        poll_until(Duration::from_secs(5), || agent_rules(c).is_empty()),
        "rules left after the session: {:?}",
        agent_rules(c)
    );
    assert_eq!(served_by(c, "/after"), "pod");
}

#[test]
fn python_reuseport_workers_share_a_stolen_port() {
    let c = Cluster::start().unwrap();
    let script = service("reuseport_workers.py").display().to_string();
    let workers = WORKERS.to_string();
    let mut app = c
        .spawn(mirrord_steal(&c, PY, &["-B", &script, "80", &workers]))
        .unwrap();
    let line = app.wait_line("listening", WAIT).unwrap();
    assert_eq!(
        line.trim(),
        format!("listening {WORKERS}"),
        "{}",
        app.stderr_tail(20)
    );
    check_workers(&c, app);
}

#[test]
fn node_cluster_workers_share_a_stolen_port() {
    let c = Cluster::start().unwrap();
    let script = service("cluster_workers.js").display().to_string();
    let workers = WORKERS.to_string();
    let mut app = c
        .spawn(mirrord_steal(&c, "node", &[&script, "80", &workers]))
        .unwrap();
    let line = app.wait_line("listening", WAIT).unwrap();
    assert_eq!(
        line.trim(),
        format!("listening {WORKERS}"),
        "{}",
        app.stderr_tail(20)
    );
    check_workers(&c, app);
}
