//! The VS Code extension end to end, in a real VS Code: code-server with the packaged `.vsix`
//! installed, driven by playwright-core in Debian's Chromium (`vscode-extension/e2e/run.mjs`).
//!
//! code-server, the extension host, `mirrord-server --stdio` it starts, the debuggee that VS
//! Code's js-debug launches, and Chromium all run in the cluster's `dev` namespace; requests to
//! the pod are sent from the `client` namespace (the driver runs `ip netns exec <client> curl`).
//!
//! Ignored by default (it needs code-server, Chromium and the `.vsix`):
//! `vscode-extension/scripts/test-all.sh` prepares them and runs it with
//! `cargo test -p mirrord-tests --test vscode -- --ignored`, passing
//! `MIRRORD_E2E_CODE_SERVER` (the code-server launcher) and `MIRRORD_E2E_VSIX`.

use mirrord_tests::{output_within, target_dir_bin, Cluster};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole browser session (the driver bounds each of its own waits more tightly).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(420);
const CODE_SERVER_READY: Duration = Duration::from_secs(90);
const PORT: u16 = 8765;

const APP_JS: &str = r#"// A small HTTP app: the local version of the pod's service.
const http = require('http');
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/e2e-break')) {
    debugger; // the end-to-end test checks that the debugger stops here
  }
  res.setHeader('x-served-by', 'local');
  res.setHeader('x-pid', String(process.pid));
  // feature.env: the pod's variable, as this launch received it.
  res.setHeader('x-pod-greeting', process.env.POD_GREETING || '(unset)');
  res.end(`local: ${req.method} ${req.url}\n`);
});
server.listen(80, () => console.log(`app listening on 80 (pid ${process.pid})`));
"#;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

fn env_path(name: &str) -> PathBuf {
    let v = std::env::var_os(name)
        .unwrap_or_else(|| panic!("{name} is not set: run vscode-extension/scripts/test-all.sh"));
    PathBuf::from(v)
}

/// Copies the extension's output channel and the daemon's log (files named `*mirrord*`) out of
/// VS Code's log dir, which goes away with the cluster's workdir: CI keeps them as artifacts.
fn copy_logs(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let mut stack = vec![from.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(from).unwrap_or(&p);
                if !rel.to_string_lossy().contains("mirrord") {
                    continue;
                }
                let dest = to.join(rel.to_string_lossy().replace('/', "__"));
                let _ = std::fs::create_dir_all(to);
                let _ = std::fs::copy(&p, &dest);
            }
        }
    }
}

#[test]
#[ignore = "needs code-server, Chromium and the .vsix: run vscode-extension/scripts/test-all.sh"]
fn vscode_extension_runs_with_mirrord_and_shows_traffic() {
    let code_server = env_path("MIRRORD_E2E_CODE_SERVER");
    let vsix = env_path("MIRRORD_E2E_VSIX");
    let shots = std::env::var_os("MIRRORD_E2E_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target").join("vscode-e2e"));
    std::fs::create_dir_all(&shots).unwrap();
    let driver = repo_root()
        .join("vscode-extension")
        .join("e2e")
        .join("run.mjs");
    let server_bin = target_dir_bin("mirrord-server");

    let c = Cluster::start().unwrap();
    let root = c.workdir().join("vscode");
    let ws = root.join("workspace");
    let user_data = root.join("user-data");
    let extensions = root.join("extensions");
    let runtime = root.join("run");
    std::fs::create_dir_all(&runtime).unwrap();

    // The workspace: the app, its launch configuration, and the mirrord configuration.
    write(&ws.join("app.js"), APP_JS);
    write(
        &ws.join(".vscode/launch.json"),
        r#"{
  "version": "0.2.0",
  "configurations": [
    {
      "type": "node",
      "request": "launch",
      "name": "app",
      "program": "${workspaceFolder}/app.js",
      "console": "internalConsole"
    }
  ]
}
"#,
    );
    let mirrord_json = format!(
        "{{\n  \"target\": \"pid/{}\",\n  \"feature\": {{\"env\": true, \"network\": {{\"incoming\": \"steal\"}}}}\n}}\n",
        c.pod_pid()
    );
    write(&ws.join(".mirrord/mirrord.json"), &mirrord_json);

    // VS Code's user settings: the daemon binary of this build, no trust prompt, no noise.
    let settings = serde_json::json!({
        "mirrord.serverPath": server_bin,
        "mirrord.logLevel": "debug",
        "mirrord.trace.server": "messages",
        "security.workspace.trust.enabled": false,
        "workbench.startupEditor": "none",
        "workbench.tips.enabled": false,
        "workbench.enableExperiments": false,
        "extensions.autoCheckUpdates": false,
        "extensions.autoUpdate": false,
        "update.mode": "none",
        "telemetry.telemetryLevel": "off",
        "debug.internalConsoleOptions": "neverOpen",
        "debug.openDebug": "neverOpen",
        "debug.showInStatusBar": "never",
        "window.restoreWindows": "none",
        "files.autoSave": "off",
        "json.schemaDownload.enable": false,
        "npm.autoDetect": "off",
        "typescript.tsserver.experimental.enableProjectDiagnostics": false,
    });
    // code-server applies machine-scoped settings (mirrord.serverPath) from Machine/.
    for scope in ["User", "Machine"] {
        write(
            &user_data.join(scope).join("settings.json"),
            &serde_json::to_string_pretty(&settings).unwrap(),
        );
    }

    let xdg = |cmd: &mut std::process::Command| {
        cmd.env("HOME", root.join("home"))
            .env("XDG_CONFIG_HOME", root.join("xdg/config"))
            .env("XDG_DATA_HOME", root.join("xdg/data"))
            .env("XDG_CACHE_HOME", root.join("xdg/cache"))
            .env("XDG_STATE_HOME", root.join("xdg/state"))
            .env("MIRRORD_RUNTIME_DIR", &runtime)
            .env_remove("LD_PRELOAD")
            .env_remove("MIRRORD_ACTIVE");
    };

    // Install the .vsix (in dev: nothing of VS Code ever reaches a network).
    let mut install = c.dev(&code_server);
    install
        .arg("--install-extension")
        .arg(&vsix)
        .arg("--extensions-dir")
        .arg(&extensions)
        .arg("--user-data-dir")
        .arg(&user_data)
        .arg("--force");
    xdg(&mut install);
    let out = output_within(&mut install, Duration::from_secs(120)).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("successfully installed"),
        "installing {}: {text}",
        vsix.display()
    );

    // code-server in dev.
    let mut cs = c.dev(&code_server);
    cs.args([
        "--auth",
        "none",
        "--bind-addr",
        &format!("127.0.0.1:{PORT}"),
        "--disable-telemetry",
        "--disable-update-check",
        "--disable-workspace-trust",
        "--disable-getting-started-override",
        "--ignore-last-opened",
    ])
    .arg("--user-data-dir")
    .arg(&user_data)
    .arg("--extensions-dir")
    .arg(&extensions)
    .arg(&ws);
    xdg(&mut cs);
    let mut cs = c.spawn_named("code-server", cs).unwrap();
    cs.wait_line("HTTP server listening", CODE_SERVER_READY)
        .unwrap();

    // For working on the driver: keep everything up for a while and say how to reach it.
    if let Some(secs) = std::env::var("MIRRORD_E2E_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        println!(
            "HOLD dev={} client={} url=http://127.0.0.1:{PORT}/ workspace={} pod=pid/{} for {secs}s",
            c.ns_dev(),
            c.ns_client(),
            ws.display(),
            c.pod_pid()
        );
        std::thread::sleep(Duration::from_secs(secs.min(3600)));
    }

    // What the launch must see with `feature.env`: the variable as the pod's process has it,
    // read from its /proc/PID/environ (not from the constant the harness set).
    let environ = std::fs::read(format!("/proc/{}/environ", c.pod_pid())).unwrap();
    let pod_greeting = environ
        .split(|b| *b == 0)
        .find_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.strip_prefix(&format!("{}=", Cluster::POD_ENV_NAME))
                .map(str::to_owned)
        })
        .expect("the pod's process has its variable");

    // The driver: Chromium in dev, curl in client.
    let mut drive = c.dev("node");
    drive
        .arg(&driver)
        .env("E2E_URL", format!("http://127.0.0.1:{PORT}/"))
        .env("E2E_WORKSPACE", &ws)
        .env("E2E_CLIENT_NS", c.ns_client())
        .env("E2E_POD_URL", format!("http://{}/", Cluster::POD_IP))
        .env("E2E_SCREENSHOTS", &shots)
        .env("E2E_BROWSER_PROFILE", root.join("chromium"))
        .env("E2E_TARGET", format!("pid/{}", c.pod_pid()))
        .env("E2E_SERVER_BIN", &server_bin)
        .env("E2E_POD_NS", c.ns_pod())
        .env("E2E_POD_GREETING", pod_greeting);
    xdg(&mut drive);
    let out = output_within(&mut drive, DRIVER_TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "the browser driver did not finish: {e:#}\ncode-server stderr:\n{}",
            cs.stderr_tail(40)
        )
    });
    copy_logs(&user_data.join("logs"), &shots.join("logs"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    if !out.status.success() {
        let logs = c.workdir().join("logs");
        panic!(
            "the VS Code end-to-end run failed ({}); screenshots in {}; code-server log tail:\n{}\n(more in {})",
            out.status,
            shots.display(),
            cs.stderr_tail(60),
            logs.display()
        );
    }
    // Stolen requests never reached the pod (the driver's checked requests are /e2e-*).
    let leaked: Vec<String> = c
        .pod_requests()
        .into_iter()
        .filter(|r| r.contains("/e2e-"))
        .collect();
    assert!(
        leaked.is_empty(),
        "stolen requests reached the pod: {leaked:?}"
    );
    drop(cs);
}
