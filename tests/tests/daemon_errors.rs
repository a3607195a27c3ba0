//! The daemon's failures carry a kind that programs match on (the JSON-RPC error's `data`,
//! `{"kind": ...}`, the `ErrorKind` of protocol/src/api.rs), whatever the English message says.
//! No cluster is needed: every request here fails before a session would start, so nothing
//! is ever sent anywhere.

use mirrord_tests::lsp_client::{Framing, RpcClient};
use mirrord_tests::target_dir_bin;
use serde_json::{json, Value};
use std::process::Command;

fn daemon(dir: &std::path::Path) -> RpcClient {
    let mut cmd = Command::new(target_dir_bin("mirrord-server"));
    cmd.arg("--stdio")
        .env("MIRRORD_RUNTIME_DIR", dir.join("run"));
    let d = RpcClient::spawn("daemon", cmd, Framing::ContentLength, &dir.join("stderr")).unwrap();
    d.call(
        "initialize",
        json!({"processId": null, "rootUri": null, "capabilities": {}}),
    );
    d.notify("initialized", json!({}));
    d
}

fn kind(d: &RpcClient, method: &str, params: Value) -> String {
    let error = d
        .request(method, params)
        .expect_err("the request should fail");
    error["data"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("no error kind in {error}"))
        .to_owned()
}

#[test]
fn daemon_errors_carry_their_kind_in_data() {
    let dir = std::env::temp_dir().join(format!("mrd-errkinds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = daemon(&dir);
    // An empty workspace: no configuration, so no target.
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    assert_eq!(
        kind(&d, "mirrord/startSession", json!({"workspaceFolder": ws})),
        "no_target"
    );
    assert_eq!(
        kind(&d, "mirrord/startSession", json!({"target": "nonsense/x"})),
        "bad_target"
    );
    let broken = ws.join("broken.json");
    std::fs::write(&broken, "{\"feature\": 3}").unwrap();
    assert_eq!(
        kind(
            &d,
            "mirrord/startSession",
            json!({"configPath": broken, "target": "pid/1"})
        ),
        "config"
    );
    assert_eq!(
        kind(&d, "mirrord/stopSession", json!({"sessionId": "nope"})),
        "no_session"
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
