//! Debug from the browser, end to end: `mirrord exec` steals the pod's port 80 with a header
//! filter and prints the browser extension's setup link; Chromium (headless, new mode) with the
//! extension unpacked from the packed zip, in the `client` namespace, opens that link, adds a
//! URL pattern for the pod's /app/ pages, turns the rule on and loads pages from the pod (answered by the local
//! program), then turns it off (answered by the pod again).
//!
//! Ignored by default: it needs Chromium (`/usr/bin/chromium`) and the extension's npm packages
//! (playwright-core); `browser-extension/scripts/test.sh` installs both and runs it.

use mirrord_tests::{no_proxy, run_ok, target_dir_bin, Cluster};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// Upper bound for the whole browser run (Chromium's first start on a busy machine is slow).
const BROWSER_RUN: Duration = Duration::from_secs(240);
/// The system Python (the `python3` on PATH may be a pyenv shim).
const PY: &str = "/usr/bin/python3";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// Packs the extension with its own script and unpacks the zip: what the browser loads is
/// exactly what the zip holds.
fn packed_extension(c: &Cluster) -> PathBuf {
    let zip = c.workdir().join("mirrord-browser.zip");
    run_ok(Command::new(repo().join("browser-extension/scripts/pack.sh")).arg(&zip)).unwrap();
    let dir = c.workdir().join("extension");
    run_ok(
        Command::new(PY)
            .args([
                "-c",
                "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])",
            ])
            .arg(&zip)
            .arg(&dir),
    )
    .unwrap();
    assert!(dir.join("manifest.json").exists());
    dir
}

/// The `chrome-extension://` link in a line of `mirrord exec`'s output.
fn link_in(line: &str) -> String {
    line.split_whitespace()
        .find(|w| w.starts_with("chrome-extension://"))
        .unwrap_or_else(|| panic!("no link in {line:?}"))
        .to_owned()
}

/// A text field of a step, without the surrounding whitespace pages add or drop.
fn text<'a>(step: &'a Value, field: &str) -> &'a str {
    step[field].as_str().unwrap_or_default().trim()
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("the browser run has no step {name:?}: {steps:?}"))
}

#[test]
#[ignore = "needs Chromium and browser-extension/node_modules: run browser-extension/scripts/test.sh"]
fn browser_extension_sends_the_session_header_only_while_on() {
    let c = Cluster::start().unwrap();
    let cfg = c.workdir().join("steal.json");
    std::fs::write(
        &cfg,
        r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice"}}}}}"#,
    )
    .unwrap();

    // The developer's program under mirrord, in dev.
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.args(["exec", "-t", &format!("pid/{}", c.pod_pid()), "-f"])
        .arg(&cfg)
        .args(["--", PY, "-B"])
        .arg(repo().join("tests/services/local_http.py"))
        .arg("80")
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    no_proxy(&mut cmd);
    let mut app = c.spawn(cmd).unwrap();
    let offer = app.wait_stderr_line("chrome-extension://", WAIT).unwrap();
    app.wait_line("listening", WAIT).unwrap();
    let link = link_in(&offer);
    assert!(
        link.contains("#header=x-user&value=alice&"),
        "the link does not carry the filter's header: {offer}"
    );

    let extension = packed_extension(&c);
    let mut driver = c.client("node");
    no_proxy(&mut driver)
        .arg(repo().join("browser-extension/e2e/run.mjs"))
        .env("E2E_EXTENSION_DIR", &extension)
        .env("E2E_LINK", &link)
        .env("E2E_POD_URL", format!("http://{}", Cluster::POD_IP))
        .env("E2E_PROFILE", c.workdir().join("chromium-profile"))
        .env("E2E_SHOTS", repo().join("target/browser-e2e"));
    let mut run = c.spawn_named("browser-e2e", driver).unwrap();
    let status = run.wait_timeout(BROWSER_RUN).unwrap();
    let steps: Vec<Value> = run
        .stdout_to_end(WAIT)
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        status.is_some_and(|s| s.success()),
        "the browser run failed ({status:?}): {steps:?}\n{}",
        run.stderr_tail(40)
    );

    // Installed: no host access by default.
    let loaded = step(&steps, "loaded");
    assert_eq!(loaded["origins"], serde_json::json!([]), "{loaded}");
    // Installed but not configured: the pod answers.
    let before = step(&steps, "before");
    assert_eq!(before["servedBy"], "pod", "{before}");
    assert_eq!(text(before, "body"), "pod: GET /browser-before", "{before}");
    // The link filled the form with the session's header, and left the rule off.
    let form = step(&steps, "link");
    assert_eq!(form["header"], "x-user", "{form}");
    assert_eq!(form["value"], "alice", "{form}");
    assert_eq!(form["filter"], "x-user: alice", "{form}");
    assert_eq!(form["status"], "off", "{form}");
    // On: access to the chosen site only, one rule.
    let on_status = step(&steps, "on-status");
    assert_eq!(
        on_status["origins"],
        serde_json::json!(["http://10.244.0.10/*"]),
        "{on_status}"
    );
    assert_eq!(on_status["rules"], 1, "{on_status}");
    // On, outside the chosen pattern (http://10.244.0.10/app/*): the pod.
    let outside = step(&steps, "outside");
    assert_eq!(outside["servedBy"], "pod", "{outside}");
    assert_eq!(
        text(outside, "body"),
        "pod: GET /browser-outside",
        "{outside}"
    );
    // On: the navigation and the page's own request reach the local program.
    let on = step(&steps, "on");
    assert_eq!(on["servedBy"], "local", "{on}");
    assert_eq!(text(on, "body"), "local: GET /app/browser-on", "{on}");
    let xhr = step(&steps, "xhr");
    assert_eq!(xhr["servedBy"], "local", "{xhr}");
    assert_eq!(text(xhr, "body"), "local: GET /app/browser-xhr", "{xhr}");
    // Off: the pod again.
    let off = step(&steps, "off");
    assert_eq!(off["servedBy"], "pod", "{off}");
    assert_eq!(text(off, "body"), "pod: GET /app/browser-off", "{off}");

    // Removing the pattern removed its rule and gave the site's access back.
    let removed = step(&steps, "removed");
    assert_eq!(removed["origins"], serde_json::json!([]), "{removed}");
    assert_eq!(removed["rules"], 0, "{removed}");

    // The program saw the stolen requests with the header the extension added, and the pod
    // the others.
    let seen: Vec<Value> = app
        .stdout_lines()
        .iter()
        .filter(|l| l.contains("\"method\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for path in ["/app/browser-on", "/app/browser-xhr"] {
        let r = seen
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("{path} did not reach the program: {seen:?}"));
        assert_eq!(r["headers"]["x-user"], "alice", "{r}");
    }
    assert!(
        !seen.iter().any(
            |r| ["/browser-before", "/browser-outside", "/app/browser-off"]
                .contains(&r["path"].as_str().unwrap_or_default())
        ),
        "{seen:?}"
    );
    let pod = c.pod_requests();
    for line in [
        "GET /browser-before",
        "GET /browser-outside",
        "GET /app/browser-off",
    ] {
        assert!(
            pod.iter().any(|l| l == line),
            "{line} missing at the pod: {pod:?}"
        );
    }
    assert!(
        !pod.iter()
            .any(|l| l == "GET /app/browser-on" || l == "GET /app/browser-xhr"),
        "{pod:?}"
    );
}

/// The IDE's "mirrord: Debug from browser" reads the link from `mirrord/listSessions`: a
/// session whose steal has a header filter carries it (here a pattern, so without a value), a
/// session without one does not.
#[test]
fn daemon_lists_the_browser_setup_of_a_filtered_steal() {
    use mirrord_tests::lsp_client::{Framing, RpcClient};
    use serde_json::json;

    let c = Cluster::start().unwrap();
    let mut cmd = c.dev(target_dir_bin("mirrord-server"));
    cmd.arg("--stdio")
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    let d = RpcClient::spawn(
        "daemon",
        cmd,
        Framing::ContentLength,
        &c.workdir().join("daemon.stderr"),
    )
    .unwrap();
    d.call(
        "initialize",
        json!({"processId": null, "rootUri": null, "capabilities": {}}),
    );
    d.notify("initialized", json!({}));

    let target = format!("pid/{}", c.pod_pid());
    let filtered = c.workdir().join("filtered.json");
    std::fs::write(
        &filtered,
        r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"^x-debug: .*"}}}}}"#,
    )
    .unwrap();
    let mirror = c.workdir().join("mirror.json");
    std::fs::write(&mirror, r#"{"feature":{"network":{"incoming":"mirror"}}}"#).unwrap();
    let a = d.call(
        "mirrord/startSession",
        json!({"configPath": filtered, "target": target}),
    );
    let b = d.call(
        "mirrord/startSession",
        json!({"configPath": mirror, "target": target}),
    );

    let listed = d.call("mirrord/listSessions", json!({}));
    let find = |s: &Value| {
        listed["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["sessionId"] == s["sessionId"])
            .unwrap_or_else(|| panic!("{s} not listed: {listed}"))
            .clone()
    };
    let browser = &find(&a)["browser"];
    assert_eq!(
        browser,
        &json!({
            "link": "chrome-extension://hmjmnnhpoalhfbhncjafhgmdgijcijjh/options.html#filter=%5Ex-debug%3A+.*",
            "filter": "^x-debug: .*",
        }),
        "{listed}"
    );
    assert!(find(&b).get("browser").is_none(), "{listed}");
}
