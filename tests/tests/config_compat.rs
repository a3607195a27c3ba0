//! Issue 18: mirrord's own configuration files work here (keys this product does not have are
//! warnings with their position, never errors), and `feature.env` gives the program the target
//! process's environment.
//!
//! Every test builds its own cluster; `mirrord` and the programs it launches run in the `dev`
//! namespace, targets are processes in the pod's namespace (`pid/`).

use mirrord_tests::lsp_client::{Framing, RpcClient};
use mirrord_tests::{no_proxy, output_within, target_dir_bin, Cluster, ManagedChild};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

const PY: &str = "/usr/bin/python3";

/// The file from the issue, as a new user copies it from mirrord's documentation.
const ISSUE_FILE: &str = r#"{
  "target": { "path": "deployment/bear-app", "namespace": "default" },
  "accept_invalid_certificates": false,
  "feature": {
    "env": true,
    "fs": "read",
    "network": { "incoming": { "mode": "steal", "http_filter": { "header_filter": "x-debug: true" } },
                 "outgoing": true, "dns": true }
  },
  "agent": { "ttl": 30, "startup_timeout": 120 },
  "operator": false
}
"#;

/// A team's file with an outgoing filter and many of mirrord's other keys.
const OUTGOING_FILTER_FILE: &str = r#"{
  "target": { "path": "pod/payment-api-7d9f8", "namespace": "payments" },
  "skip_processes": ["bash", "node"],
  "telemetry": false,
  "feature": {
    "network": {
      "incoming": { "mode": "steal", "http_filter": { "path_filter": "^/api/", "ports": 8080 },
                    "ignore_ports": [9229], "on_concurrent_steal": "abort" },
      "outgoing": {
        "tcp": true, "udp": true, "ignore_localhost": true,
        "filter": { "local": ["tcp://1.1.1.0/24:1337", "google.com", ":53"] },
        "unix_streams": "bear.+"
      },
      "dns": { "enabled": true, "filter": { "local": "google.com" } }
    },
    "fs": { "mode": "write", "read_only": [".+\\.yaml"] },
    "env": { "include": "DATABASE_*;PAYMENT_*", "override": { "LOG_LEVEL": "debug" } },
    "hostname": true
  },
  "agent": { "log_level": "info", "json_log": false, "flush_connections": true,
             "image": { "registry": "internal.repo/images/mirrord", "tag": "3.120.0" } }
}
"#;

/// The same kind of file in TOML.
const TOML_FILE: &str = r#"target = "deployment/bear-app"
operator = false
skip_processes = ["bash"]

[feature]
env = true
fs = "read"
hostname = true

[feature.network]
incoming = "mirror"
dns = true

[feature.network.outgoing]
tcp = true
udp = false

[feature.copy_target]
scale_down = false

[agent]
ttl = 30
"#;

fn write(c: &Cluster, name: &str, text: &str) -> PathBuf {
    let p = c.workdir().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn mirrord(c: &Cluster, args: &[&str]) -> Command {
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.args(args)
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    no_proxy(&mut cmd);
    cmd
}

fn run(mut cmd: Command) -> Output {
    output_within(&mut cmd, Duration::from_secs(120)).unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// 1-based line and column of the first `needle` in `text` (the test's own count, independent
/// of the product's).
fn position_of(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in the file"));
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// A program that prints its environment as JSON.
const PRINT_ENV: &str = "import json, os; print(json.dumps(dict(os.environ)), flush=True)";

fn program_env(out: &Output) -> BTreeMap<String, String> {
    assert!(
        out.status.success(),
        "mirrord exec failed ({}): {}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let line = text(&out.stdout)
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no environment printed: {}", text(&out.stdout)))
        .to_owned();
    serde_json::from_str(&line).unwrap()
}

/// The environment of a process, as the kernel has it.
fn proc_environ(pid: u32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter_map(|e| std::str::from_utf8(e).ok()?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A target process in the pod's namespace with a distinctive environment, as a container's
/// process has one.
fn env_target(c: &Cluster) -> ManagedChild {
    let mut cmd = c.pod("sleep");
    cmd.arg("600")
        .env_clear()
        .env(
            "DATABASE_URL",
            "postgres://payments:s3cret@payment-db.payments:5432/payments",
        )
        .env("PAYMENT_SERVICE_HOST", "10.96.0.20")
        .env("PAYMENT_SERVICE_PORT", "8080")
        .env("SECRET_TOKEN", "pod-secret")
        .env("REGION", "pod-region")
        .env("PATH", "/pod/bin:/usr/bin:/bin")
        .env("MIRRORD_SESSION", "pod-session")
        .env("MIRRORD_CONFIG", "{}");
    let child = c.spawn(cmd).unwrap();
    // `ip netns exec` execs `sleep` under the same pid; while that exec is under way the
    // kernel shows an empty environment (the new image's is set up after its name).
    // Ready = the process is `sleep` and its environment is in place.
    let comm = format!("/proc/{}/comm", child.pid());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&comm).map_or(true, |c| c.trim() != "sleep")
        || !proc_environ(child.pid()).contains_key("PAYMENT_SERVICE_HOST")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the target never became sleep"
        );
        std::thread::yield_now();
    }
    child
}

#[test]
fn mirrord_files_verify_with_warnings_only_and_start_a_session() {
    let c = Cluster::start().unwrap();
    let pod = format!("pid/{}", c.pod_pid());
    let files = [
        (
            "issue.mirrord.json",
            ISSUE_FILE,
            vec!["feature.fs", "operator"],
        ),
        (
            "team.mirrord.json",
            OUTGOING_FILTER_FILE,
            vec![
                "skip_processes",
                "telemetry",
                "feature.fs",
                "feature.hostname",
                "feature.network.incoming.on_concurrent_steal",
                "feature.network.outgoing.unix_streams",
                "agent.flush_connections",
                "agent.json_log",
            ],
        ),
        (
            "mirrord.toml",
            TOML_FILE,
            vec![
                "operator",
                "skip_processes",
                "feature.fs",
                "feature.hostname",
                "feature.copy_target",
            ],
        ),
    ];
    for (name, body, ignored) in files {
        let path = write(&c, name, body);
        let p = path.to_str().unwrap();
        let out = run(mirrord(&c, &["verify-config", p]));
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{name}: {stdout}\n{stderr}");
        assert!(stdout.contains(": ok (target: "), "{name}: {stdout}");
        let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
        assert_eq!(warnings.len(), ignored.len(), "{name}: {stderr}");
        for key in &ignored {
            assert!(
                warnings
                    .iter()
                    .any(|w| w.contains(&format!("`{key}`")) && w.contains("ignored")),
                "{name}: no warning for {key}: {stderr}"
            );
        }
        assert!(!stderr.contains("error"), "{name}: {stderr}");

        // A session starts with it (the file's target is overridden with the simulated pod).
        let out = run(mirrord(
            &c,
            &["exec", "-f", p, "-t", &pod, "--", PY, "-c", PRINT_ENV],
        ));
        let env = program_env(&out);
        assert!(env.contains_key("MIRRORD_SESSION"), "{name}: {env:?}");
        let stderr = text(&out.stderr);
        let warning_lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("accepted for compatibility with mirrord"))
            .collect();
        assert_eq!(warning_lines.len(), 1, "{name}: {stderr}");
        for key in &ignored {
            assert!(warning_lines[0].contains(key), "{name}: {stderr}");
        }
    }

    // Positions are the keys' own: the issue file's `"fs"` and the TOML file's `fs =`.
    let issue = c.workdir().join("issue.mirrord.json");
    let out = run(mirrord(&c, &["verify-config", issue.to_str().unwrap()]));
    let (line, column) = position_of(ISSUE_FILE, "\"fs\"");
    let expected = format!("{}:{line}:{column}: warning: `feature.fs`", issue.display());
    assert!(
        text(&out.stderr).contains(&expected),
        "{}",
        text(&out.stderr)
    );
    let toml = c.workdir().join("mirrord.toml");
    let out = run(mirrord(&c, &["verify-config", toml.to_str().unwrap()]));
    let (line, column) = position_of(TOML_FILE, "fs = ");
    let expected = format!("{}:{line}:{column}: warning: `feature.fs`", toml.display());
    assert!(
        text(&out.stderr).contains(&expected),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unknown_keys_and_wrong_values_stay_errors() {
    let c = Cluster::start().unwrap();
    let typo = ISSUE_FILE.replace("\"incoming\"", "\"incomming\"");
    let path = write(&c, "typo.mirrord.json", &typo);
    let out = run(mirrord(&c, &["verify-config", path.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("did you mean `incoming`"), "{stderr}");
    // serde_json points just past the key.
    let (line, column) = position_of(&typo, "\"incomming\"");
    let at = format!(
        "{}:{line}:{}: unknown field `incomming`",
        path.display(),
        column + "\"incomming\"".len() - 1
    );
    assert!(stderr.contains(&at), "{stderr}\nexpected {at}");

    let far = ISSUE_FILE.replace("\"operator\"", "\"zzzzzz\"");
    let path = write(&c, "far.mirrord.json", &far);
    let out = run(mirrord(&c, &["verify-config", path.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown field `zzzzzz`"), "{stderr}");
    assert!(!stderr.contains("did you mean"), "{stderr}");

    let wrong = ISSUE_FILE.replace("\"steal\"", "\"stael\"");
    let path = write(&c, "wrong.mirrord.json", &wrong);
    let out = run(mirrord(&c, &["verify-config", path.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown variant `stael`"), "{stderr}");
    let (line, _) = position_of(&wrong, "\"stael\"");
    assert!(
        stderr.contains(&format!("{}:{line}:", path.display())),
        "{stderr}"
    );
    // A wrong value under an ignored key's neighbour is still checked: `env` must be a boolean
    // or an object.
    let bad_env = ISSUE_FILE.replace("\"env\": true", "\"env\": 3");
    let path = write(&c, "badenv.mirrord.json", &bad_env);
    let out = run(mirrord(&c, &["verify-config", path.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // ... and an exec with such a file starts nothing.
    let out = run(mirrord(
        &c,
        &[
            "exec",
            "-f",
            path.to_str().unwrap(),
            "-t",
            &format!("pid/{}", c.pod_pid()),
            "--",
            "true",
        ],
    ));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn env_true_gives_the_target_process_environment_without_replacing_mirrord_or_local_basics() {
    let c = Cluster::start().unwrap();
    let target = env_target(&c);
    let pid = target.pid();
    let pod_env = proc_environ(pid);
    assert_eq!(pod_env["REGION"], "pod-region", "{pod_env:?}");
    let cfg = write(&c, "env.mirrord.json", r#"{"feature": {"env": true}}"#);
    let mut cmd = mirrord(
        &c,
        &[
            "exec",
            "-f",
            cfg.to_str().unwrap(),
            "-t",
            &format!("pid/{pid}"),
            "--",
            PY,
            "-c",
            PRINT_ENV,
        ],
    );
    cmd.env("REGION", "local-region")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    let env = program_env(&run(cmd));
    for name in [
        "DATABASE_URL",
        "PAYMENT_SERVICE_HOST",
        "PAYMENT_SERVICE_PORT",
        "SECRET_TOKEN",
        "REGION",
    ] {
        assert_eq!(env.get(name), pod_env.get(name), "{name}: {env:?}");
    }
    // PATH describes the developer's machine: not taken by default.
    assert_eq!(env["PATH"], "/usr/local/bin:/usr/bin:/bin");
    // The session's own variables and the layer preload win over the pod's.
    assert_ne!(env["MIRRORD_SESSION"], "pod-session");
    assert_ne!(env["MIRRORD_CONFIG"], "{}");
    assert!(env["LD_PRELOAD"].contains("libmirrord_layer.so"), "{env:?}");

    // Without `feature.env` (this product's default) the program keeps its own environment.
    let plain = write(&c, "plain.mirrord.json", "{}");
    let mut cmd = mirrord(
        &c,
        &[
            "exec",
            "-f",
            plain.to_str().unwrap(),
            "-t",
            &format!("pid/{pid}"),
            "--",
            PY,
            "-c",
            PRINT_ENV,
        ],
    );
    cmd.env("REGION", "local-region");
    let env = program_env(&run(cmd));
    assert!(!env.contains_key("DATABASE_URL"), "{env:?}");
    assert_eq!(env["REGION"], "local-region");
}

#[test]
fn env_include_exclude_override_env_file_and_unset() {
    let c = Cluster::start().unwrap();
    let target = env_target(&c);
    let pid = target.pid();
    let pod_env = proc_environ(pid);
    write(
        &c,
        "dev.env",
        "# local overrides\nPAYMENT_SERVICE_PORT=9090\nFROM_FILE='yes'\n",
    );
    let cfg = write(
        &c,
        "rules.mirrord.json",
        r#"{"feature": {"env": {
            "include": "DATABASE_URL;PAYMENT_*;REGION",
            "exclude": ["REGION"],
            "override": {"DATABASE_URL": "postgres://localhost:5432/dev"},
            "env_file": "dev.env",
            "unset": "local_only"
        }}}"#,
    );
    let mut cmd = mirrord(
        &c,
        &[
            "exec",
            "-f",
            cfg.to_str().unwrap(),
            "-t",
            &format!("pid/{pid}"),
            "--",
            PY,
            "-c",
            PRINT_ENV,
        ],
    );
    cmd.current_dir(c.workdir())
        .env("REGION", "local-region")
        .env("LOCAL_ONLY", "1")
        .env_remove("SECRET_TOKEN");
    let env = program_env(&run(cmd));
    assert_eq!(env["DATABASE_URL"], "postgres://localhost:5432/dev");
    assert_eq!(env["PAYMENT_SERVICE_HOST"], pod_env["PAYMENT_SERVICE_HOST"]);
    assert_eq!(
        env["PAYMENT_SERVICE_PORT"], "9090",
        "the env file beats the pod"
    );
    assert_eq!(env["FROM_FILE"], "yes");
    assert_eq!(
        env["REGION"], "local-region",
        "excluded: keeps its local value"
    );
    assert!(!env.contains_key("SECRET_TOKEN"), "not included: {env:?}");
    assert!(!env.contains_key("LOCAL_ONLY"), "unset (any case): {env:?}");
}

/// The IDE's launch: `startSession` hands the pod's variables in `env`, but never one the launch
/// configuration sets itself, nor the session's own; `verifyConfig` reports ignored keys as
/// warnings.
#[test]
fn ide_launch_gets_the_pod_environment_but_keeps_its_own_variables() {
    let c = Cluster::start().unwrap();
    let target = env_target(&c);
    let pid = target.pid();
    let pod_env = proc_environ(pid);
    let cfg = write(&c, "ide.mirrord.json", ISSUE_FILE);
    let mut cmd = c.dev(target_dir_bin("mirrord-server"));
    cmd.arg("--stdio")
        .arg("--log-file")
        .arg(c.workdir().join("daemon.log"))
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    let stderr = c.workdir().join("daemon.stderr");
    let d = RpcClient::spawn("daemon", cmd, Framing::ContentLength, &stderr).unwrap();
    d.call(
        "initialize",
        json!({"processId": null, "rootUri": null, "capabilities": {}}),
    );
    d.notify("initialized", json!({}));

    let verified = d.call("mirrord/verifyConfig", json!({"path": cfg}));
    assert_eq!(verified["ok"], true, "{verified}");
    let diagnostics = verified["diagnostics"].as_array().unwrap();
    assert_eq!(diagnostics.len(), 2, "{verified}");
    let (line, column) = position_of(ISSUE_FILE, "\"fs\"");
    assert!(
        diagnostics.iter().any(|d| d["severity"] == "warning"
            && d["line"] == line
            && d["column"] == column
            && d["message"].as_str().unwrap().contains("feature.fs")),
        "{verified}"
    );

    let session = d.call(
        "mirrord/startSession",
        json!({
            "configPath": cfg,
            "target": format!("pid/{pid}"),
            "launch": {"program": PY, "args": [], "cwd": c.workdir(),
                       "env": {"REGION": "from-launch-json", "MIRRORD_CONFIG_FILE": cfg}}
        }),
    );
    let env = session["env"].as_object().unwrap();
    assert_eq!(
        env["DATABASE_URL"].as_str(),
        pod_env.get("DATABASE_URL").map(String::as_str),
        "{session}"
    );
    assert!(!env.contains_key("REGION"), "the launch's own: {session}");
    assert_ne!(env["MIRRORD_SESSION"], "pod-session");
    assert!(env["LD_PRELOAD"]
        .as_str()
        .unwrap()
        .contains("libmirrord_layer.so"));
    d.call(
        "mirrord/stopSession",
        json!({"sessionId": session["sessionId"]}),
    );
    drop(target);
}

/// The process of a simulated pod: the one whose environment names the pod (`POD_NAME`).
fn sim_pod_process(pod: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|raw| {
                    raw.split(|b| *b == 0)
                        .any(|e| e == format!("POD_NAME={pod}").as_bytes())
                })
                .unwrap_or(false)
        })
}

/// A Kubernetes target: the agent reads the environment of the container's process it found,
/// which is what the pod spec and the kubelet gave it.
#[test]
fn env_of_a_kubernetes_target_is_its_container_process_environment() {
    use mirrord_tests::k8s::{SimCluster, SimOptions};
    let sim = SimCluster::start(SimOptions {
        agent_bin: Some(target_dir_bin("mirrord-agent")),
        ..SimOptions::default()
    })
    .unwrap();
    let cfg = sim.workdir().join("env.mirrord.json");
    std::fs::write(&cfg, r#"{"feature": {"env": true}}"#).unwrap();
    let mut cmd = sim.dev_cmd(target_dir_bin("mirrord"));
    cmd.args([
        "exec",
        "-t",
        "deployment/payment-api",
        "-n",
        "payments",
        "-f",
    ])
    .arg(&cfg)
    .args(["--", PY, "-c", PRINT_ENV])
    .env("KUBECONFIG", sim.kubeconfig())
    .env("MIRRORD_RUNTIME_DIR", sim.workdir().join("run"))
    .env("PATH", "/usr/bin:/bin");
    for var in [
        "MIRRORD_TARGET_NAMESPACE",
        "MIRRORD_KUBECONFIG",
        "MIRRORD_KUBE_CONTEXT",
    ] {
        cmd.env_remove(var);
    }
    no_proxy(&mut cmd);
    let env = program_env(&run(cmd));
    let pod = env
        .get("POD_NAME")
        .unwrap_or_else(|| panic!("no POD_NAME: {env:?}"))
        .clone();
    assert!(
        sim.pods_of("payments", "app=payment-api").contains(&pod),
        "{pod}"
    );
    let pid = sim_pod_process(&pod).expect("the pod's process");
    let pod_env = proc_environ(pid);
    for name in [
        "POD_NAME",
        "HOSTNAME",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
    ] {
        assert_eq!(env.get(name), pod_env.get(name), "{name}");
    }
    assert_eq!(env["PATH"], "/usr/bin:/bin", "PATH stays local");
}

/// `mirrord schema` knows every key of the three files (an independent validator, Python's
/// `jsonschema`), and still rejects a key in no mirrord schema.
#[test]
fn schema_accepts_the_mirrord_files() {
    let c = Cluster::start().unwrap();
    let out = run(mirrord(&c, &["schema"]));
    assert!(out.status.success());
    let schema = write(&c, "schema.json", &text(&out.stdout));
    let files = [
        write(&c, "a.mirrord.json", ISSUE_FILE),
        write(&c, "b.mirrord.json", OUTGOING_FILTER_FILE),
        write(&c, "c.mirrord.toml", TOML_FILE),
        write(
            &c,
            "d.mirrord.json",
            &ISSUE_FILE.replace("\"incoming\"", "\"incomming\""),
        ),
    ];
    let validate = r#"
import json, sys, tomllib, jsonschema
schema = json.load(open(sys.argv[1]))
for path in sys.argv[2:]:
    doc = tomllib.load(open(path, 'rb')) if path.endswith('.toml') else json.load(open(path))
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
    print('valid' if not errors else 'invalid: ' + errors[0].message)
"#;
    let out = run({
        let mut cmd = Command::new(PY);
        cmd.args(["-c", validate]).arg(&schema).args(&files);
        cmd
    });
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report} {}", text(&out.stderr));
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[..3], ["valid", "valid", "valid"], "{report}");
    assert!(lines[3].starts_with("invalid"), "{report}");
}
