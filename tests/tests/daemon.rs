//! The IDE daemon end to end: the real `mirrord-server` binary driven as an IDE drives it
//! (JSON-RPC with LSP framing on stdio, or over WebSocket), with real programs launched in the
//! environment it hands out.
//!
//! Every test builds its own cluster. The daemon and every launched program run in the `dev`
//! namespace; traffic to the pod is sent from the `client` namespace; the WebSocket client is
//! the `ws_rpc` bridge, also run in `dev`. Waits are bounded and wait for a signal (a
//! notification, a line, a process exit) rather than sleeping.

use mirrord_tests::lsp_client::{Framing, RpcClient};
use mirrord_tests::{no_proxy, output_within, run_ok, target_dir_bin, Cluster, ManagedChild};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
/// The system Python (the `python3` on PATH may be a pyenv shim).
const PY: &str = "/usr/bin/python3";
const HELLO: &str = "payment-service: hello\n";

fn service(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("services")
        .join(name)
}

fn run_dir(c: &Cluster) -> PathBuf {
    c.workdir().join("run")
}

/// `mirrord-server ARGS` in dev, with the cluster's runtime dir and a log in the workdir.
fn server_cmd(c: &Cluster, log: &str, args: &[&str]) -> Command {
    let mut cmd = c.dev(target_dir_bin("mirrord-server"));
    cmd.args(args)
        .arg("--log-file")
        .arg(c.workdir().join(log))
        .args(["--log-level", "debug"])
        .env("MIRRORD_RUNTIME_DIR", run_dir(c));
    cmd
}

/// `mirrord-server --stdio` in dev, initialized as an IDE does (with progress support).
fn stdio_daemon(c: &Cluster, name: &str) -> RpcClient {
    stdio_daemon_with(c, name, json!({"window": {"workDoneProgress": true}}))
}

/// [`stdio_daemon`] for a client with these LSP `capabilities`.
fn stdio_daemon_with(c: &Cluster, name: &str, capabilities: Value) -> RpcClient {
    let cmd = server_cmd(c, &format!("{name}.log"), &["--stdio"]);
    let stderr = c.workdir().join(format!("{name}.stderr"));
    let d = RpcClient::spawn(name, cmd, Framing::ContentLength, &stderr).unwrap();
    let init = d.call(
        "initialize",
        json!({"processId": null, "rootUri": null, "capabilities": capabilities}),
    );
    assert_eq!(init["serverInfo"]["name"], "mirrord-server", "{init}");
    d.notify("initialized", json!({}));
    d
}

/// Writes `text` to `name` in the workdir and returns its path.
fn write(c: &Cluster, name: &str, text: &str) -> PathBuf {
    let p = c.workdir().join(name);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// `program args` in dev with a session's environment, as an IDE launches its debuggee:
/// `env` = the `startSession` result (its `env` set, its `envToUnset` removed).
fn launch(c: &Cluster, session: &Value, program: &str, args: &[&str]) -> Command {
    let mut cmd = c.dev("/usr/bin/env");
    for var in session["envToUnset"].as_array().unwrap() {
        cmd.arg("-u").arg(var.as_str().unwrap());
    }
    for (k, v) in session["env"].as_object().unwrap() {
        cmd.arg(format!("{k}={}", v.as_str().unwrap()));
    }
    cmd.arg(program).args(args);
    // What the IDE unsets must not reach the program even if the IDE's own env has it.
    cmd.env("MIRRORD_ACTIVE", "1");
    no_proxy(&mut cmd);
    cmd
}

fn run(mut cmd: Command) -> Output {
    output_within(&mut cmd, WAIT).unwrap()
}

fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "failed ({}): stdout {out} stderr {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A launched curl of payment-service (through the session): its pid and its output.
fn curl_service(c: &Cluster, session: &Value, host: &str, path: &str) -> (u32, String) {
    let url = format!("http://{host}:8080{path}");
    let mut child = c
        .spawn(launch(
            c,
            session,
            "curl",
            &["-sS", "-f", "--max-time", "20", &url],
        ))
        .unwrap();
    let status = child
        .wait_timeout(WAIT)
        .unwrap()
        .expect("curl finishes in time");
    let out = child.stdout_to_end(WAIT).unwrap().join("\n");
    assert!(
        status.success(),
        "curl {url}: {status}: {out} {}",
        child.stderr_tail(10)
    );
    (child.pid(), out)
}

/// local_http.py on `port` with a session's environment; returns once it listens (for a
/// stolen port, `listen` returns once the agent redirects the port).
fn local_app(c: &Cluster, session: &Value, port: u16) -> ManagedChild {
    let script = service("local_http.py").display().to_string();
    let mut app = c
        .spawn(launch(c, session, PY, &["-B", &script, &port.to_string()]))
        .unwrap();
    app.wait_line("listening", WAIT).unwrap();
    app
}

/// curl from the client namespace to the pod's port 80; returns (x-served-by, body).
fn curl_pod(c: &Cluster, path: &str, header: &str) -> (String, String) {
    let mut cmd = c.client("curl");
    no_proxy(&mut cmd).args(["-sS", "--max-time", "10", "-D", "-", "-H", header]);
    cmd.arg(format!("http://{}{path}", Cluster::POD_IP));
    let text = ok(run(cmd));
    let by = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-served-by").then(|| v.trim())
        })
        .unwrap_or("")
        .to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (by, body)
}

/// pids of this cluster's agent processes (their sockets are in the cluster's runtime dir),
/// each agent's guard (a forked child that removes its rules when it dies) included.
fn agent_processes(c: &Cluster) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("mirrord-agent.*{}", run_dir(c).display())])
        .output()
        .unwrap();
    let mut pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
}

/// pids of this cluster's agents: agent processes that are not another agent's guard.
fn agent_pids(c: &Cluster) -> Vec<u32> {
    let all = agent_processes(c);
    all.iter()
        .copied()
        .filter(|p| !parent_of(*p).is_some_and(|pp| all.contains(&pp)))
        .collect()
}

/// Waits until no agent process (guards included) of this cluster is left.
fn assert_no_agents_left(c: &Cluster) {
    assert!(
        poll_until(WAIT, || agent_processes(c).is_empty()).is_some(),
        "agent processes left: {:?}",
        agent_processes(c)
    );
}

/// Whether `pid` is a live (not zombie) mirrord-agent.
fn is_agent(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    // A zombie has an empty cmdline.
    String::from_utf8_lossy(&cmdline).contains("mirrord-agent")
}

/// The pod's nat rules (iptables-save and nft, run inside the pod namespace).
fn pod_nat_rules(c: &Cluster) -> String {
    let ipt = run_ok(c.pod("iptables-save").args(["-t", "nat"])).unwrap();
    let nft = run_ok(c.pod("nft").args(["list", "ruleset"])).unwrap_or_default();
    format!("{ipt}\n{nft}")
}

fn has_mirrord_rules(c: &Cluster) -> bool {
    let rules = pod_nat_rules(c);
    rules.contains("MIRRORD_") || rules.contains("mirrord_")
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns how long it took.
fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether notification `n` is a `mirrord/traffic` of `session` whose event passes `pred`.
fn is_traffic(n: &Value, session: &str, pred: &dyn Fn(&Value) -> bool) -> bool {
    n["method"] == "mirrord/traffic"
        && n["params"]["sessionId"] == session
        && pred(&n["params"]["event"])
}

/// Waits for a traffic event of `session` for which `pred` holds; returns the event.
fn wait_traffic(d: &RpcClient, session: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    match d.wait_notification(WAIT, |n| is_traffic(n, session, &pred)) {
        Some(n) => n["params"]["event"].clone(),
        None => panic!(
            "no {what} traffic event for session {session}; events: {:#?}",
            traffic_events(d, session)
        ),
    }
}

/// Every traffic event notified for `session` so far.
fn traffic_events(d: &RpcClient, session: &str) -> Vec<Value> {
    d.notifications()
        .into_iter()
        .filter(|n| is_traffic(n, session, &|_| true))
        .map(|n| n["params"]["event"].clone())
        .collect()
}

fn history(d: &RpcClient, session: &str) -> Vec<Value> {
    let h = d.call("mirrord/trafficHistory", json!({"sessionId": session}));
    h["events"].as_array().unwrap().clone()
}

fn wait_session_state(
    d: &RpcClient,
    session: &str,
    state: &str,
    timeout: Duration,
) -> Option<Value> {
    d.wait_notification(timeout, |n| {
        n["method"] == "mirrord/sessionChanged"
            && n["params"]["sessionId"] == session
            && n["params"]["state"] == state
    })
}

fn sessions(d: &RpcClient) -> Vec<Value> {
    d.call("mirrord/listSessions", json!({}))["sessions"]
        .as_array()
        .unwrap()
        .clone()
}

fn start_session(d: &RpcClient, params: Value) -> Value {
    d.call("mirrord/startSession", params)
}

fn session_id(s: &Value) -> String {
    s["sessionId"].as_str().unwrap().to_owned()
}

fn progress_begins(d: &RpcClient) -> usize {
    d.notifications()
        .iter()
        .filter(|n| n["method"] == "$/progress" && n["params"]["value"]["kind"] == "begin")
        .count()
}

const STEAL: &str = r#"{"feature":{"network":{"incoming":"steal"}}}"#;

/// Issue 4, "Done means" 1, 2, 3 and the stopSession half of 5: an IDE session on the pod,
/// real programs launched with its env (outgoing + DNS, and a stolen port), the traffic view,
/// a relaunch that reuses the agent, and stopSession ending the agent and its redirect.
#[test]
fn an_ide_session_serves_launched_programs_and_reports_their_traffic() {
    let c = Cluster::start().unwrap();
    let d = stdio_daemon(&c, "daemon");
    let pod_target = format!("pid/{}", c.pod_pid());

    // 1. Local targets: the pod (by its process or its named namespace).
    let targets = d.call("mirrord/listTargets", json!({}));
    let paths: Vec<&str> = targets["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["path"].as_str().unwrap())
        .collect();
    let pod_ns_target = format!("netns/{}", c.ns_pod());
    assert!(
        paths.contains(&pod_target.as_str()) || paths.contains(&pod_ns_target.as_str()),
        "{paths:?}"
    );

    let cfg = write(&c, "steal.json", STEAL);
    let params = json!({"target": pod_target, "configPath": cfg});
    let started = start_session(&d, params.clone());
    let sid = session_id(&started);
    let env = &started["env"];
    assert_eq!(env["MIRRORD_SESSION"], sid.as_str(), "{started}");
    assert!(env["LD_PRELOAD"]
        .as_str()
        .unwrap()
        .ends_with("libmirrord_layer.so"));
    assert!(env["MIRRORD_PROXY_ADDR"]
        .as_str()
        .unwrap()
        .starts_with(&format!("unix:{}", run_dir(&c).display())));
    assert!(env["MIRRORD_CONFIG"].as_str().unwrap().contains("steal"));
    let unset: Vec<&str> = started["envToUnset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(unset.contains(&"MIRRORD_ACTIVE"), "{unset:?}");
    // The agent start is a long step: the IDE was asked to create a progress and saw it end.
    assert!(
        d.server_requests()
            .iter()
            .any(|r| r["method"] == "window/workDoneProgress/create"),
        "{:?}",
        d.server_requests()
    );
    d.wait_notification(WAIT, |n| {
        n["method"] == "$/progress" && n["params"]["value"]["kind"] == "end"
    })
    .expect("the agent-start progress ends");
    assert_eq!(progress_begins(&d), 1);
    wait_session_state(&d, &sid, "ready", WAIT).expect("sessionChanged ready");

    let listed = sessions(&d);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["sessionId"], sid.as_str());
    assert_eq!(listed[0]["state"], "ready");
    let agent_pid = listed[0]["agentPid"].as_u64().unwrap() as u32;
    assert!(is_agent(agent_pid));
    assert_eq!(agent_pids(&c), vec![agent_pid]);

    // Outgoing + DNS: curl in dev reaches payment-service by its cluster name.
    let (curl_pid, out) = curl_service(&c, &started, "payment-service", "/");
    assert_eq!(format!("{out}\n"), HELLO);

    // Incoming: the local program on port 80 gets the pod's traffic (stolen).
    let mut app = local_app(&c, &started, 80);
    assert!(has_mirrord_rules(&c), "{}", pod_nat_rules(&c));
    let (by, body) = curl_pod(&c, "/hello", "x-test: daemon");
    assert_eq!(
        (by.as_str(), body.as_str()),
        ("local", "local: GET /hello\n")
    );
    app.wait_line("\"path\": \"/hello\"", WAIT).unwrap();

    // 2. The traffic view: the stolen request, the lookup, the connection, the processes.
    let request = wait_traffic(&d, &sid, "incoming_request", |e| {
        e["type"] == "incoming_request" && e["path"] == "/hello"
    });
    assert_eq!(request["method"], "GET", "{request}");
    assert_eq!(request["headers"]["x-test"], "daemon", "{request}");
    assert_eq!(request["status"], 200, "{request}");
    assert_eq!(request["mode"], "steal", "{request}");
    assert_eq!(request["port"], 80, "{request}");
    assert!(request["duration_ms"].is_u64(), "{request}");
    let dns = wait_traffic(&d, &sid, "dns_query", |e| {
        e["type"] == "dns_query" && e["name"] == "payment-service"
    });
    assert!(
        dns["answers"]
            .as_array()
            .unwrap()
            .contains(&json!(Cluster::SVC_IP.to_string())),
        "{dns}"
    );
    assert!(dns["duration_ms"].is_u64(), "{dns}");
    let conn = wait_traffic(&d, &sid, "outgoing_connection", |e| {
        e["type"] == "outgoing_connection" && e["port"] == 8080
    });
    assert_eq!(conn["host"], "payment-service", "{conn}");
    assert_eq!(conn["address"], Cluster::SVC_IP.to_string(), "{conn}");
    assert_eq!(conn["protocol"], "tcp", "{conn}");
    assert!(conn.get("error").is_none(), "{conn}");
    let curl_joined = wait_traffic(&d, &sid, "process_connected (curl)", |e| {
        e["type"] == "process_connected" && e["pid"] == curl_pid
    });
    assert!(
        curl_joined["executable"].as_str().unwrap().contains("curl"),
        "{curl_joined}"
    );
    wait_traffic(&d, &sid, "process_connected (app)", |e| {
        e["type"] == "process_connected" && e["pid"] == app.pid()
    });
    wait_traffic(&d, &sid, "port_subscription", |e| {
        e["type"] == "port_subscription" && e["port"] == 80 && e["active"] == true
    });
    let past = history(&d, &sid);
    for event in [&request, &dns, &conn, &curl_joined] {
        assert!(past.contains(event), "{event} not in the history {past:#?}");
    }
    let limited = d.call(
        "mirrord/trafficHistory",
        json!({"sessionId": sid, "limit": 2}),
    );
    assert_eq!(limited["events"].as_array().unwrap().len(), 2, "{limited}");

    // 3. The program stops and is launched again with the same env: it works at once, with
    // the same session and the same agent.
    let old_app = app.pid();
    app.kill().unwrap();
    let mut app = local_app(&c, &started, 80);
    let (by, _) = curl_pod(&c, "/again", "x-test: relaunch");
    assert_eq!(by, "local");
    app.wait_line("\"path\": \"/again\"", WAIT).unwrap();
    wait_traffic(&d, &sid, "process_disconnected (old app)", |e| {
        e["type"] == "process_disconnected" && e["pid"] == old_app
    });
    let again = start_session(&d, params.clone());
    assert_eq!(
        session_id(&again),
        sid,
        "a relaunch joins the running session"
    );
    assert_eq!(again["env"], started["env"]);
    let listed = sessions(&d);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["agentPid"], agent_pid);
    assert!(
        listed[0]["ports"].as_array().unwrap().contains(&json!(80)),
        "{listed:?}"
    );
    assert!(
        listed[0]["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == app.pid()),
        "{listed:?}"
    );
    assert_eq!(agent_pids(&c), vec![agent_pid], "no second agent");
    assert_eq!(progress_begins(&d), 1, "no second agent start");

    // 5. stopSession ends the agent and removes its redirect: the pod answers again.
    let stopped = d.call("mirrord/stopSession", json!({"sessionId": sid}));
    assert_eq!(stopped, json!({}));
    assert!(
        !is_agent(agent_pid),
        "the agent {agent_pid} is still running"
    );
    assert_no_agents_left(&c);
    assert!(!has_mirrord_rules(&c), "{}", pod_nat_rules(&c));
    let (by, _) = curl_pod(&c, "/after", "x-test: after");
    assert_eq!(by, "pod");
    wait_session_state(&d, &sid, "stopped", WAIT).expect("sessionChanged stopped");
    assert!(sessions(&d).is_empty());
    let err = d
        .request("mirrord/trafficHistory", json!({"sessionId": sid}))
        .unwrap_err();
    assert!(
        err["message"].as_str().unwrap().contains("no session"),
        "{err}"
    );
}

/// Issue 4, "Done means" 4 and the stdio half of 5: two sessions of one IDE on two targets,
/// each with its own traffic; the IDE going away (stdin closed) ends both and the daemon.
#[test]
fn two_sessions_get_their_own_traffic_and_closing_stdio_ends_them() {
    let c = Cluster::start().unwrap();
    let mut d = stdio_daemon(&c, "daemon");
    let cfg = write(&c, "steal.json", STEAL);
    let a = start_session(
        &d,
        json!({"target": format!("pid/{}", c.pod_pid()), "configPath": cfg}),
    );
    // Two launches of the same configuration at once (e.g. a compound launch) share one
    // session and one agent.
    let params_b = json!({"target": format!("netns/{}", c.ns_svc())});
    let first = d.send_request("mirrord/startSession", params_b.clone());
    let second = d.send_request("mirrord/startSession", params_b);
    let answers: Vec<Value> = [first, second]
        .iter()
        .map(|id| {
            let resp = d.wait_response(id, WAIT).expect("startSession answers");
            mirrord_tests::lsp_client::split_response(resp).unwrap()
        })
        .collect();
    assert_eq!(answers[0]["sessionId"], answers[1]["sessionId"]);
    let b = answers[0].clone();
    let (sid_a, sid_b) = (session_id(&a), session_id(&b));
    assert_ne!(sid_a, sid_b);
    let listed = sessions(&d);
    assert_eq!(listed.len(), 2, "{listed:?}");
    let agents: Vec<u32> = listed
        .iter()
        .map(|s| s["agentPid"].as_u64().unwrap() as u32)
        .collect();
    assert_ne!(agents[0], agents[1]);

    // Each program goes out through its own session's target.
    let (pid_a, out_a) = curl_service(&c, &a, "payment-service", "/whoami");
    assert!(
        out_a.contains(&format!("peer {}:", Cluster::POD_IP)),
        "{out_a}"
    );
    let (pid_b, out_b) = curl_service(&c, &b, Cluster::ECHO_FQDN, "/whoami");
    assert!(
        out_b.contains(&format!("peer {}:", Cluster::SVC_IP)),
        "{out_b}"
    );
    let mut app = local_app(&c, &a, 80);
    let (by, _) = curl_pod(&c, "/a", "x-test: a");
    assert_eq!(by, "local");
    app.wait_line("\"path\": \"/a\"", WAIT).unwrap();

    wait_traffic(&d, &sid_a, "dns_query (a)", |e| {
        e["type"] == "dns_query" && e["name"] == "payment-service"
    });
    wait_traffic(&d, &sid_a, "incoming_request (a)", |e| {
        e["type"] == "incoming_request" && e["path"] == "/a"
    });
    wait_traffic(&d, &sid_b, "dns_query (b)", |e| {
        e["type"] == "dns_query" && e["name"] == Cluster::ECHO_FQDN
    });
    wait_traffic(&d, &sid_b, "process_connected (b)", |e| {
        e["type"] == "process_connected" && e["pid"] == pid_b
    });
    wait_traffic(&d, &sid_a, "process_connected (a)", |e| {
        e["type"] == "process_connected" && e["pid"] == pid_a
    });
    // Events of one session's programs never show up in the other's notifications or history.
    let pids_a = [pid_a, app.pid()];
    let mentions = |events: &[Value], pids: &[u32], name: &str| {
        events.iter().any(|e| {
            e["pid"]
                .as_u64()
                .is_some_and(|p| pids.contains(&(p as u32)))
                || e["name"] == name
                || e["host"] == name
        })
    };
    let (events_a, events_b) = (traffic_events(&d, &sid_a), traffic_events(&d, &sid_b));
    assert!(
        !mentions(&events_b, &pids_a, "payment-service"),
        "{events_b:#?}"
    );
    // Only session A's program receives pod traffic.
    assert!(
        !events_b.iter().any(|e| e["type"] == "incoming_request"),
        "{events_b:#?}"
    );
    assert!(
        !mentions(&events_a, &[pid_b], Cluster::ECHO_FQDN),
        "{events_a:#?}"
    );
    assert!(!mentions(&history(&d, &sid_b), &pids_a, "payment-service"));
    assert!(d
        .notifications()
        .iter()
        .filter(|n| n["method"] == "mirrord/traffic")
        .all(|n| n["params"]["sessionId"] == sid_a.as_str()
            || n["params"]["sessionId"] == sid_b.as_str()));

    // 5. The IDE goes away: every session ends (agents, redirect) and the daemon exits.
    assert!(has_mirrord_rules(&c));
    d.close_stdin();
    let status = d
        .wait_exit(WAIT)
        .expect("the daemon exits when stdin closes");
    assert!(status.success(), "{status}");
    for pid in &agents {
        assert!(!is_agent(*pid), "agent {pid} outlived the daemon");
    }
    assert_no_agents_left(&c);
    assert!(!has_mirrord_rules(&c), "{}", pod_nat_rules(&c));
    let (by, _) = curl_pod(&c, "/after", "x-test: after");
    assert_eq!(by, "pod");
}

/// Issue 4, "Done means" 6: the WebSocket transport refuses clients without the token, serves
/// the same methods to one with it, and delivers notifications through `mirrord/subscribe`.
#[test]
fn the_websocket_transport_needs_the_token_and_streams_notifications() {
    let c = Cluster::start().unwrap();
    let mut server = c
        .spawn(server_cmd(
            &c,
            "ws-daemon.log",
            &["--listen", "127.0.0.1:0"],
        ))
        .unwrap();
    let line = server
        .wait_line("mirrord-server listening on ws://", WAIT)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap()
        .to_owned();
    let token_path = run_dir(&c).join("server.token");
    let token = std::fs::read_to_string(&token_path).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let ws_rpc = target_dir_bin("ws_rpc");
    for bad in [None, Some("wrong-token")] {
        let mut cmd = c.dev(&ws_rpc);
        cmd.arg(&url).env_remove("MIRRORD_SERVER_TOKEN");
        if let Some(t) = bad {
            cmd.env("MIRRORD_SERVER_TOKEN", t);
        }
        let out = run(cmd);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("\"handshake_status\": 401"),
            "{bad:?}: {stdout}"
        );
    }

    let mut cmd = c.dev(&ws_rpc);
    cmd.arg(&url).env("MIRRORD_SERVER_TOKEN", &token);
    let ws = RpcClient::spawn(
        "ws",
        cmd,
        Framing::Lines,
        &c.workdir().join("ws_rpc.stderr"),
    )
    .unwrap();
    let targets = ws.call("mirrord/listTargets", json!({}));
    assert!(
        targets["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["path"] == format!("netns/{}", c.ns_pod())),
        "{targets}"
    );
    let sub = ws.call("mirrord/subscribe", json!([]));
    assert!(!sub.is_null());
    let started = ws.call(
        "mirrord/startSession",
        json!({"target": format!("pid/{}", c.pod_pid())}),
    );
    let sid = session_id(&started);
    let note = |method: &'static str, pred: Box<dyn Fn(&Value) -> bool>| {
        let (sid, sub) = (sid.clone(), sub.clone());
        move |n: &Value| {
            n["method"] == "mirrord/notification"
                && n["params"]["subscription"] == sub
                && n["params"]["result"]["method"] == method
                && n["params"]["result"]["params"]["sessionId"] == sid.as_str()
                && pred(&n["params"]["result"]["params"])
        }
    };
    ws.wait_notification(
        WAIT,
        note(
            "mirrord/sessionChanged",
            Box::new(|p| p["state"] == "ready"),
        ),
    )
    .unwrap_or_else(|| panic!("no sessionChanged: {:#?}", ws.notifications()));
    let (curl_pid, out) = curl_service(&c, &started, "payment-service", "/");
    assert_eq!(format!("{out}\n"), HELLO);
    let conn = ws
        .wait_notification(
            WAIT,
            note(
                "mirrord/traffic",
                Box::new(|p| {
                    p["event"]["type"] == "outgoing_connection" && p["event"]["port"] == 8080
                }),
            ),
        )
        .unwrap_or_else(|| panic!("no traffic notification: {:#?}", ws.notifications()));
    assert_eq!(
        conn["params"]["result"]["params"]["event"]["address"],
        Cluster::SVC_IP.to_string()
    );
    ws.wait_notification(
        WAIT,
        note(
            "mirrord/traffic",
            Box::new(move |p| {
                p["event"]["type"] == "process_connected" && p["event"]["pid"] == curl_pid
            }),
        ),
    )
    .expect("process_connected over WebSocket");
    let listed = ws.call("mirrord/listSessions", json!({}));
    let agent_pid = listed["sessions"][0]["agentPid"].as_u64().unwrap() as u32;
    assert!(is_agent(agent_pid));
    let past = ws.call("mirrord/trafficHistory", json!({"sessionId": sid}));
    assert!(
        past["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "dns_query" && e["name"] == "payment-service"),
        "{past}"
    );
    let verify = ws.call(
        "mirrord/verifyConfig",
        json!({"path": write(&c, "ok.json", STEAL)}),
    );
    assert_eq!(verify["ok"], true, "{verify}");
    let err = ws
        .request("mirrord/startSession", json!({"target": 5}))
        .unwrap_err();
    assert_eq!(err["code"], -32602, "{err}");
    ws.call("mirrord/stopSession", json!({"sessionId": sid}));
    assert!(!is_agent(agent_pid));
    ws.wait_notification(
        WAIT,
        note(
            "mirrord/sessionChanged",
            Box::new(|p| p["state"] == "stopped"),
        ),
    )
    .expect("sessionChanged stopped over WebSocket");

    // A WebSocket client that goes away ends its sessions too.
    let again = ws.call(
        "mirrord/startSession",
        json!({"target": format!("pid/{}", c.pod_pid())}),
    );
    let listed = ws.call("mirrord/listSessions", json!({}));
    let agent_pid = listed["sessions"][0]["agentPid"].as_u64().unwrap() as u32;
    assert_eq!(listed["sessions"][0]["sessionId"], again["sessionId"]);
    drop(ws);
    assert!(
        poll_until(WAIT, || !is_agent(agent_pid)).is_some(),
        "the agent outlived its WebSocket client"
    );
    // So does one that never subscribed to notifications.
    let mut cmd = c.dev(&ws_rpc);
    cmd.arg(&url).env("MIRRORD_SERVER_TOKEN", &token);
    let quiet = RpcClient::spawn(
        "ws-quiet",
        cmd,
        Framing::Lines,
        &c.workdir().join("ws_rpc-quiet.stderr"),
    )
    .unwrap();
    quiet.call(
        "mirrord/startSession",
        json!({"target": format!("netns/{}", c.ns_pod())}),
    );
    let listed = quiet.call("mirrord/listSessions", json!({}));
    let agent_pid = listed["sessions"][0]["agentPid"].as_u64().unwrap() as u32;
    assert!(is_agent(agent_pid));
    drop(quiet);
    assert!(
        poll_until(WAIT, || !is_agent(agent_pid)).is_some(),
        "the agent outlived a WebSocket client that never subscribed"
    );
    assert!(
        server.try_wait().unwrap().is_none(),
        "the daemon keeps serving"
    );
}

/// Issue 4, "Done means" 7: configuration files get diagnostics at the right place,
/// completion of values, hover docs; startSession with that workspace fails the same way.
#[test]
fn config_files_get_diagnostics_completion_and_hover() {
    let c = Cluster::start().unwrap();
    let d = stdio_daemon(&c, "daemon");
    let workspace = c.workdir().join("workspace");
    let bad = "{\n  \"feature\": {\n    \"network\": {\"outgoing\": {\"tcp\": \"yes\"}}\n  }\n}\n";
    let path = write(&c, "workspace/.mirrord/mirrord.json", bad);
    let uri = format!("file://{}", path.display());
    d.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": "json", "version": 1, "text": bad}}),
    );
    let published = d
        .wait_notification(WAIT, |n| {
            n["method"] == "textDocument/publishDiagnostics" && n["params"]["uri"] == uri.as_str()
        })
        .expect("diagnostics for the opened file");
    let diags = published["params"]["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 1, "{published}");
    let line = bad.lines().nth(2).unwrap();
    let start = line.find("\"yes\"").unwrap();
    assert_eq!(
        diags[0]["range"],
        json!({"start": {"line": 2, "character": start}, "end": {"line": 2, "character": start + 5}}),
        "{published}"
    );
    assert_eq!(diags[0]["severity"], 1);
    let message = diags[0]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("invalid type"), "{message}");

    // Fixing the file clears them.
    let good = bad.replace("\"yes\"", "true");
    d.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"text": good}]}),
    );
    d.wait_notification(WAIT, |n| {
        n["method"] == "textDocument/publishDiagnostics"
            && n["params"]["uri"] == uri.as_str()
            && n["params"]["diagnostics"] == json!([])
    })
    .expect("diagnostics cleared");

    // Completion inside `"mode": "` offers the modes; hover on a key gives its docs.
    let editing = "{\n  \"feature\": {\n    \"network\": {\n      \"incoming\": {\"mode\": \"\"}\n    }\n  }\n}\n";
    let edit_uri = format!("file://{}/.mirrord/edit.json", workspace.display());
    d.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": edit_uri, "languageId": "json", "version": 1, "text": editing}}),
    );
    let mode_line = editing.lines().nth(3).unwrap();
    let in_quotes = mode_line.find("\"mode\": \"").unwrap() + "\"mode\": \"".len();
    let completion = d.call(
        "textDocument/completion",
        json!({"textDocument": {"uri": edit_uri}, "position": {"line": 3, "character": in_quotes}}),
    );
    let items = completion
        .get("items")
        .unwrap_or(&completion)
        .as_array()
        .unwrap_or_else(|| panic!("{completion}"));
    let labels: Vec<&str> = items.iter().map(|i| i["label"].as_str().unwrap()).collect();
    for mode in ["mirror", "steal", "off"] {
        assert!(labels.contains(&mode), "{labels:?}");
    }
    let key_at = mode_line.find("incoming").unwrap() + 2;
    let hover = d.call(
        "textDocument/hover",
        json!({"textDocument": {"uri": edit_uri}, "position": {"line": 3, "character": key_at}}),
    );
    let docs = hover["contents"]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{hover}"));
    assert!(docs.contains("feature.network.incoming"), "{docs}");
    assert!(docs.contains("steal"), "{docs}");

    // The file on disk is still the bad one: verifyConfig and startSession (which finds it in
    // the workspace) report the same problem.
    let verify = d.call("mirrord/verifyConfig", json!({"path": path}));
    assert_eq!(verify["ok"], false);
    assert_eq!(verify["diagnostics"][0]["line"], 3, "{verify}");
    assert_eq!(
        verify["diagnostics"][0]["message"],
        message.as_str(),
        "{verify}"
    );
    let err = d
        .request(
            "mirrord/startSession",
            json!({"workspaceFolder": workspace, "target": format!("pid/{}", c.pod_pid())}),
        )
        .unwrap_err();
    let text = err["message"].as_str().unwrap();
    assert!(text.contains(&message), "{err}");
    assert!(text.contains(&format!("{}:3:", path.display())), "{err}");
    assert!(sessions(&d).is_empty());
    assert_eq!(agent_pids(&c), Vec::<u32>::new());
}

/// Issue 4, "Done means" 8, first half: malformed JSON-RPC gets JSON-RPC errors and the
/// daemon keeps serving.
#[test]
fn malformed_requests_get_json_rpc_errors_and_the_daemon_keeps_serving() {
    let c = Cluster::start().unwrap();
    let mut d = stdio_daemon(&c, "daemon");
    for round in 0..2 {
        d.send_raw(br#"{"jsonrpc":"2.0","id":900,"method":"#)
            .unwrap();
        let resp = d.wait_response(&Value::Null, WAIT).unwrap_or_else(|| {
            panic!(
                "round {round}: no answer to invalid JSON; stderr {}",
                d.stderr_tail(10)
            )
        });
        assert_eq!(resp["error"]["code"], -32700, "{resp}");

        let err = d.request("mirrord/noSuchMethod", json!({})).unwrap_err();
        assert_eq!(err["code"], -32601, "{err}");
        let err = d
            .request("mirrord/startSession", json!({"target": 5}))
            .unwrap_err();
        assert_eq!(err["code"], -32602, "{err}");
        let err = d
            .request("mirrord/trafficHistory", json!({"sessionId": ["x"]}))
            .unwrap_err();
        assert_eq!(err["code"], -32602, "{err}");
        let err = d.request("mirrord/stopSession", json!("nope")).unwrap_err();
        assert_eq!(err["code"], -32602, "{err}");

        // JSON that is not a JSON-RPC message: -32600, with its id when it has one.
        d.send_raw(br#"{"jsonrpc":"2.0","id":901}"#).unwrap();
        let resp = d
            .wait_response(&json!(901), WAIT)
            .expect("an answer to id 901");
        assert_eq!(resp["error"]["code"], -32600, "{resp}");
        d.send_raw(b"[1, 2]").unwrap();
        let resp = d
            .wait_response(&Value::Null, WAIT)
            .expect("an answer to a batch");
        assert_eq!(resp["error"]["code"], -32600, "{resp}");
        // A frame without Content-Length.
        d.send_unframed(b"X-Nonsense: 1\r\n\r\n").unwrap();
        let resp = d
            .wait_response(&Value::Null, WAIT)
            .expect("an answer to a frame without Content-Length");
        assert_eq!(resp["error"]["code"], -32700, "{resp}");

        let targets = d.call("mirrord/listTargets", json!({}));
        assert!(targets["targets"].as_array().is_some_and(|t| !t.is_empty()));
    }
    // A method's own failure is an error too, not a dead daemon.
    let err = d
        .request("mirrord/startSession", json!({"target": "bogus"}))
        .unwrap_err();
    assert!(
        err["message"].as_str().unwrap().contains("invalid target"),
        "{err}"
    );
    assert!(d.garbage().is_empty(), "{:?}", d.garbage());
    assert_eq!(sessions(&d), Vec::<Value>::new());
    // The LSP way out: shutdown, then exit (`"params": null` is accepted like no params).
    d.send_raw(br#"{"jsonrpc":"2.0","id":950,"method":"shutdown","params":null}"#)
        .unwrap();
    let resp = d
        .wait_response(&json!(950), WAIT)
        .expect("shutdown answers");
    assert_eq!(resp.get("result"), Some(&Value::Null), "{resp}");
    d.notify("exit", Value::Null);
    let status = d.wait_exit(WAIT).expect("the daemon exits after `exit`");
    assert!(status.success(), "{status}");
}

/// Issue 4, "Done means" 8, second half: a SIGKILLed agent is reported within a second, and
/// programs of the session then get errors, not a hang.
#[test]
fn a_killed_agent_is_reported_at_once_and_programs_fail_fast() {
    let c = Cluster::start().unwrap();
    // An IDE without server-initiated progress.
    let d = stdio_daemon_with(&c, "daemon", json!({}));
    let started = start_session(&d, json!({"target": format!("pid/{}", c.pod_pid())}));
    let sid = session_id(&started);
    // Notifications are sent in order: none of the agent start's progress came before "ready".
    wait_session_state(&d, &sid, "ready", WAIT).expect("sessionChanged ready");
    assert!(d.server_requests().is_empty(), "{:?}", d.server_requests());
    assert!(
        !d.notifications()
            .iter()
            .any(|n| n["method"] == "$/progress"),
        "{:#?}",
        d.notifications()
    );
    // A program that is in the session when the agent dies.
    let script = r#"
import sys, time, urllib.request
print(urllib.request.urlopen('http://payment-service:8080/', timeout=20).read().decode().strip(), flush=True)
open(sys.argv[1]).readline()  # the test kills the agent, then says go
t = time.time()
try:
    urllib.request.urlopen('http://payment-service:8080/', timeout=20).read()
    print('unexpected success', flush=True)
except Exception as e:
    print('failed after %.1fs: %r' % (time.time() - t, e), flush=True)
"#;
    let go = c.workdir().join("go.fifo");
    run_ok(Command::new("mkfifo").arg(&go)).unwrap();
    let go_s = go.display().to_string();
    let mut prog = c
        .spawn(launch(&c, &started, PY, &["-c", script, &go_s]))
        .unwrap();
    prog.wait_line("payment-service: hello", WAIT).unwrap();

    let agent_pid = sessions(&d)[0]["agentPid"].as_u64().unwrap() as i32;
    // SAFETY: kill(2) of the agent pid the daemon reported (a live mirrord-agent).
    assert!(is_agent(agent_pid as u32));
    unsafe { libc::kill(agent_pid, libc::SIGKILL) };
    let killed = Instant::now();
    let changed = wait_session_state(&d, &sid, "error", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no sessionChanged error: {:#?}", d.notifications()));
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(1), "reported after {took:?}");
    let message = changed["params"]["message"].as_str().unwrap_or("");
    assert!(message.contains("agent"), "{changed}");
    wait_traffic(&d, &sid, "error", |e| e["type"] == "error");

    // The running program's next request fails at once.
    std::fs::write(&go, "go\n").unwrap();
    let line = prog
        .wait_line("failed after", Duration::from_secs(15))
        .unwrap();
    assert!(!line.contains("unexpected"), "{line}");
    // A program launched with the session's env now fails fast too.
    let t = Instant::now();
    let out = run(launch(
        &c,
        &started,
        "curl",
        &["-sS", "--max-time", "20", "http://payment-service:8080/"],
    ));
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "curl took {:?}",
        t.elapsed()
    );
    // The daemon itself keeps serving.
    assert!(sessions(&d).iter().all(|s| s["sessionId"] != sid.as_str()));
    d.call("mirrord/listTargets", json!({}));
}

/// A config file of a running session that breaks on disk is reported on that session (with
/// its position); fixing it is reported too, and the next launch takes the fixed file.
#[test]
fn a_config_file_changed_on_disk_is_reported_on_its_session() {
    let c = Cluster::start().unwrap();
    let cfg = write(
        &c,
        "ws/.mirrord/mirrord.json",
        &format!(r#"{{"target": "pid/{}"}}"#, c.pod_pid()),
    );
    let d = stdio_daemon(&c, "watch");
    let session = d.call(
        "mirrord/startSession",
        json!({"workspaceFolder": c.workdir().join("ws")}),
    );
    let id = session["sessionId"].as_str().unwrap().to_owned();
    std::fs::write(
        &cfg,
        "{\n  \"target\": \"pid/1\",\n  \"feature\": {\"netwrk\": {}}\n}\n",
    )
    .unwrap();
    let broken = d
        .wait_notification(WAIT, |n| {
            n["method"] == "mirrord/sessionChanged"
                && n["params"]["sessionId"] == id
                && n["params"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("unknown field `netwrk`"))
        })
        .expect("the broken config is reported");
    let message = broken["params"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{}:3:", cfg.display())),
        "{message}"
    );
    std::fs::write(
        &cfg,
        format!(
            r#"{{"target": "pid/{}", "feature": {{"network": {{"dns": false}}}}}}"#,
            c.pod_pid()
        ),
    )
    .unwrap();
    d.wait_notification(WAIT, |n| {
        n["method"] == "mirrord/sessionChanged"
            && n["params"]["sessionId"] == id
            && n["params"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("next launch"))
    })
    .expect("the fix is reported");
    // The next launch takes the new configuration: a new session (the old one had no program).
    let next = d.call(
        "mirrord/startSession",
        json!({"workspaceFolder": c.workdir().join("ws")}),
    );
    assert_ne!(next["sessionId"], session["sessionId"]);
    assert!(
        next["env"]["MIRRORD_CONFIG"]
            .as_str()
            .unwrap()
            .contains("\"enabled\":false"),
        "{next}"
    );
}

/// `mirrord-server --stdio` in dev with `--idle-timeout-secs secs`, initialized.
fn daemon_with_idle_timeout(c: &Cluster, name: &str, secs: u64) -> RpcClient {
    let secs = secs.to_string();
    let cmd = server_cmd(
        c,
        &format!("{name}.log"),
        &["--stdio", "--idle-timeout-secs", &secs],
    );
    let d = RpcClient::spawn(
        name,
        cmd,
        Framing::ContentLength,
        &c.workdir().join(format!("{name}.stderr")),
    )
    .unwrap();
    d.call(
        "initialize",
        json!({"processId": null, "rootUri": null, "capabilities": {}}),
    );
    d.notify("initialized", json!({}));
    d
}

/// A session nobody uses ends by itself after the idle timeout, agent included.
#[test]
fn an_idle_session_ends_by_itself() {
    let c = Cluster::start().unwrap();
    let d = daemon_with_idle_timeout(&c, "idle", 1);
    // Taken before the session exists: its idle clock starts later, so it cannot end sooner.
    let started = Instant::now();
    let session = d.call(
        "mirrord/startSession",
        json!({"target": format!("pid/{}", c.pod_pid())}),
    );
    let id = session["sessionId"].as_str().unwrap().to_owned();
    let stopped = d
        .wait_notification(Duration::from_secs(15), |n| {
            n["method"] == "mirrord/sessionChanged"
                && n["params"]["sessionId"] == id
                && n["params"]["state"] == "stopped"
        })
        .expect("the idle session stops");
    // The user learns why, not only that it stopped.
    assert!(
        stopped["params"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no program used the session for 1 s")),
        "{stopped}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    let sessions = d.call("mirrord/listSessions", json!({}));
    assert_eq!(
        sessions["sessions"].as_array().unwrap().len(),
        0,
        "{sessions}"
    );
}

/// The idle clock counts from the last program that used the session, however short it ran:
/// a program that joins and leaves between two looks of the supervisor is still use.
#[test]
fn a_session_used_by_short_programs_is_not_idle() {
    let c = Cluster::start().unwrap();
    let d = daemon_with_idle_timeout(&c, "short", 6);
    let session = d.call(
        "mirrord/startSession",
        json!({"target": format!("pid/{}", c.pod_pid())}),
    );
    // The session's idle clock started before startSession answered.
    let ready = Instant::now();
    let id = session["sessionId"].as_str().unwrap().to_owned();
    // Letting time pass is the point here: the idle clock is what is tested.
    std::thread::sleep(Duration::from_millis(1500));
    // A lookup through the session: the program lives a few milliseconds.
    let used = Instant::now();
    let out = ok(run(launch(
        &c,
        &session,
        "getent",
        &["ahosts", Cluster::SVC_NAME],
    )));
    assert!(out.contains(&Cluster::SVC_IP.to_string()), "{out}");
    let left = Instant::now();
    // Past the idle timeout counted from the session's start (6 s, when it would end without
    // the program), before it counted from the program's start (the earliest it may end now).
    let check = ready + Duration::from_millis(6800);
    std::thread::sleep(check.saturating_duration_since(Instant::now()));
    assert!(
        used.elapsed() < Duration::from_secs(6),
        "the machine was too slow for this test's timing: the check came {:?} after the program",
        used.elapsed()
    );
    let sessions = d.call("mirrord/listSessions", json!({}));
    assert_eq!(
        sessions["sessions"].as_array().unwrap().len(),
        1,
        "a session used {:?} ago ended as idle: {sessions}",
        left.elapsed()
    );
    // And it still ends once nothing uses it.
    d.wait_notification(Duration::from_secs(15), |n| {
        n["method"] == "mirrord/sessionChanged"
            && n["params"]["sessionId"] == id
            && n["params"]["state"] == "stopped"
    })
    .expect("the session stops once idle");
    assert!(left.elapsed() >= Duration::from_secs(5));
}

/// `http_mix.py` from the client namespace: `count` requests over `conns` keep-alive
/// connections, request i of a kind going to `<path>/<i>` (see the script); returns its summary.
fn http_mix(c: &Cluster, count: usize, conns: usize, kinds: &str) -> Value {
    let mut cmd = c.client(PY);
    no_proxy(&mut cmd)
        .arg("-B")
        .arg(service("http_mix.py"))
        .arg(Cluster::POD_IP.to_string())
        .arg("80")
        .arg(count.to_string())
        .arg(conns.to_string())
        .arg(kinds);
    let out = ok(run(cmd));
    serde_json::from_str(out.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Waits until `count(lines)` reaches `n` (or WAIT passed) and returns the last count.
fn wait_count(n: usize, mut count: impl FnMut() -> usize) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = count();
        if got >= n || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 14, point 4: `mirrord dump` (observing the port beside the session) and the IDE traffic
/// panel (`mirrord/traffic` of the session) show every request, in every incoming mode: mirror,
/// unfiltered steal and filtered steal (the panel shows the requests the session got; dump all
/// of them). 200 requests over 4 keep-alive connections per mode, each counted by its own path.
#[test]
fn dump_and_the_traffic_panel_show_every_request_in_every_mode() {
    const N: usize = 200;
    let c = Cluster::start().unwrap();
    let d = stdio_daemon(&c, "daemon");
    let target = format!("pid/{}", c.pod_pid());
    let modes = [
        ("mirror", r#"{"feature":{"network":{"incoming":"mirror"}}}"#),
        ("steal", STEAL),
        (
            "filtered",
            r#"{"feature":{"network":{"incoming":{"mode":"steal",
                "http_filter":{"header_filter":"x-user: alice"}}}}}"#,
        ),
    ];
    for (mode, config) in modes {
        let cfg = write(&c, &format!("{mode}.json"), config);
        let started = start_session(&d, json!({"target": target, "configPath": cfg}));
        let sid = session_id(&started);
        let mut app = local_app(&c, &started, 80);
        let mut dump = c
            .spawn({
                let mut cmd = c.dev(target_dir_bin("mirrord"));
                cmd.args(["dump", "-t", &target, "-p", "80", "--json"])
                    .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
                cmd
            })
            .unwrap();
        dump.wait_stderr_line("watching port(s) 80", WAIT).unwrap();
        let prefix = format!("/every/{mode}");
        let (kinds, to_session) = match mode {
            "mirror" => (
                format!(r#"[{{"method":"GET","path":"{prefix}","expect":"pod"}}]"#),
                N,
            ),
            "steal" => (
                format!(r#"[{{"method":"GET","path":"{prefix}","expect":"local"}}]"#),
                N,
            ),
            _ => (
                format!(
                    r#"[{{"method":"GET","path":"{prefix}/a","headers":{{"x-user":"alice"}},"expect":"local"}},
                        {{"method":"GET","path":"{prefix}/b","expect":"pod"}}]"#
                ),
                0,
            ),
        };
        let s = http_mix(&c, N, 4, &kinds);
        assert_eq!(
            (&s["sent"], &s["ok"]),
            (&json!(N), &json!(N)),
            "{mode}: {s}"
        );
        // The filtered steal gets the alice requests only (the PRNG picks the kinds).
        let to_session = if to_session == 0 {
            s["by"]["local"].as_u64().unwrap() as usize
        } else {
            to_session
        };
        let on_path = |e: &Value| {
            e["type"] == "incoming_request"
                && e["path"].as_str().is_some_and(|p| p.starts_with(&prefix))
        };
        let dumped = wait_count(N, || {
            dump.stdout_lines()
                .iter()
                .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|e| on_path(&e)))
                .count()
        });
        let panel = wait_count(to_session, || {
            traffic_events(&d, &sid)
                .iter()
                .filter(|e| on_path(e))
                .count()
        });
        assert_eq!(dumped, N, "{mode}: requests in mirrord dump");
        assert_eq!(panel, to_session, "{mode}: requests in the traffic panel");
        // Each row says how the request reached the program (copies delivered by the agent
        // itself are shown by the agent, the others by the session).
        let shown_as = if mode == "mirror" { "mirror" } else { "steal" };
        for e in traffic_events(&d, &sid).iter().filter(|e| on_path(e)) {
            assert_eq!(e["mode"], shown_as, "{mode}: {e}");
            assert!(
                e["status"].as_u64().is_some_and(|s| s == 200),
                "{mode}: {e}"
            );
        }
        dump.kill().unwrap();
        app.kill().unwrap();
        assert_eq!(
            d.call("mirrord/stopSession", json!({"sessionId": sid})),
            json!({})
        );
    }
}
