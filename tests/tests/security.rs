//! The session's sockets accept only their session: wrong tokens are refused, garbage closes the
//! connection, and the server and agent keep serving everybody else.

use mirrord_tests::{output_within, target_dir_bin, Cluster};
use std::time::Duration;

/// With the agent's direct data listener (the default for local targets) and with the
/// session's own (`MIRRORD_SESSION_RELAY=1`): both are attacked the same way.
#[test]
fn wrong_tokens_and_garbage_are_refused_and_service_continues() {
    for relay in ["0", "1"] {
        attack(relay);
    }
}

fn attack(session_relay: &str) {
    let c = Cluster::start().unwrap();
    // The peer talks to the session's loopback data listener itself, so loopback must stay local.
    let config = c.workdir().join("mirrord.json");
    std::fs::write(
        &config,
        r#"{"feature": {"network": {"outgoing": {"ignore_localhost": true}}}}"#,
    )
    .unwrap();
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.args(["exec", "-t", &format!("pid/{}", c.pod_pid()), "-f"])
        .arg(&config)
        .arg("--")
        .arg(target_dir_bin("hostile_peer"))
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"))
        .env("MIRRORD_SESSION_RELAY", session_relay);
    let out = output_within(&mut cmd, Duration::from_secs(60)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "relay {session_relay}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every check ran (the peer stops at the first failure).
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok: ")).count(),
        9,
        "{stdout}"
    );
}
