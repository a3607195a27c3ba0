//! Incoming traffic end to end: requests sent from the `client` namespace to the pod reach the
//! developer's program (mirrored or stolen), which runs under `mirrord exec` in `dev`.

use mirrord_tests::{output_within, target_dir_bin, Cluster, ManagedChild};
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn service(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("services")
        .join(name)
}

/// Writes `config` (JSON) to the workdir and returns its path.
fn config(c: &Cluster, name: &str, config: &str) -> PathBuf {
    let p = c.workdir().join(name);
    std::fs::write(&p, config).unwrap();
    p
}

/// Starts the local HTTP program on `port` under mirrord with `config`; waits until it listens.
fn local_app(c: &Cluster, config: &PathBuf, port: u16, extra: &[&str]) -> ManagedChild {
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.args(["exec", "-t", &format!("pid/{}", c.pod_pid()), "-f"])
        .arg(config)
        .args(["--", "/usr/bin/python3", "-B"])
        .arg(service("local_http.py"))
        .arg(port.to_string())
        .args(extra)
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    let mut child = c.spawn(cmd).unwrap();
    child.wait_line("listening", WAIT).unwrap();
    child
}

/// curl from the client namespace to the pod; returns (status line's served-by header, body).
fn curl_pod(c: &Cluster, path: &str, headers: &[&str]) -> (String, String) {
    let mut cmd = c.client("curl");
    cmd.args(["-sS", "--max-time", "10", "-D", "-"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("http://{}{path}", Cluster::POD_IP));
    let out = output_within(&mut cmd, WAIT).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let served_by = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("x-served-by: ")
                .or_else(|| l.strip_prefix("X-Served-By: "))
        })
        .unwrap_or("")
        .trim()
        .to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (served_by, body)
}

#[test]
fn steal_serves_the_client_from_the_local_program_and_the_pod_returns_after() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "steal.json",
        r#"{"feature":{"network":{"incoming":"steal"}}}"#,
    );
    let mut app = local_app(&c, &cfg, 80, &[]);
    let (by, body) = curl_pod(&c, "/hello", &["x-user: anyone"]);
    assert_eq!(
        (by.as_str(), body.as_str()),
        ("local", "local: GET /hello\n")
    );
    let seen = app.wait_line("\"path\": \"/hello\"", WAIT).unwrap();
    // The program sees the real client and the pod's address, as if it ran in the pod.
    assert!(
        seen.contains(&format!("\"peer\": \"{}:", Cluster::CLIENT_IP)),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("\"peername\": \"{}:", Cluster::CLIENT_IP)),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("\"sockname\": \"{}:80\"", Cluster::POD_IP)),
        "{seen}"
    );
    app.kill().unwrap();
    let (by, _) = curl_pod(&c, "/again", &[]);
    assert_eq!(by, "pod");
}
