//! Incoming traffic end to end: requests sent from the `client` namespace to the pod reach the
//! developer's program (mirrored or stolen), which runs under `mirrord exec` in `dev`.
//!
//! Every test builds its own cluster. Traffic is only ever sent from the `client` namespace (to
//! the pod) or inside `dev` (to the program's local listener); the pod's rules are read with
//! `iptables-save` / `nft` run inside the pod namespace.

use mirrord_tests::{no_proxy, output_within, run_ok, target_dir_bin, Cluster, ManagedChild};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
/// The system Python (the `python3` on PATH may be a pyenv shim).
const PY: &str = "/usr/bin/python3";

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

/// `mirrord exec -t pid/<pod> -f config -- program args` in the dev namespace.
fn mirrord(c: &Cluster, config: &PathBuf, program: &str, args: &[&str]) -> Command {
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.args(["exec", "-t", &format!("pid/{}", c.pod_pid()), "-f"])
        .arg(config)
        .arg("--")
        .arg(program)
        .args(args)
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    no_proxy(&mut cmd);
    cmd
}

/// The local HTTP program on `port` under mirrord with `config`.
fn local_app_cmd(c: &Cluster, config: &PathBuf, port: u16, extra: &[&str]) -> Command {
    let script = service("local_http.py").display().to_string();
    let port = port.to_string();
    let mut args = vec!["-B", script.as_str(), port.as_str()];
    args.extend_from_slice(extra);
    mirrord(c, config, PY, &args)
}

/// Starts the local HTTP program on `port` under mirrord with `config`; waits until it listens
/// (for a subscribed port, `listen` returns once the agent redirects the port).
fn local_app(c: &Cluster, config: &PathBuf, port: u16, extra: &[&str]) -> ManagedChild {
    let mut child = c.spawn(local_app_cmd(c, config, port, extra)).unwrap();
    child.wait_line("listening", WAIT).unwrap();
    child
}

/// curl from the client namespace to the pod's port 80; returns (x-served-by, body).
fn curl_pod(c: &Cluster, path: &str, args: &[&str]) -> (String, String) {
    let mut cmd = c.client("curl");
    no_proxy(&mut cmd).args(["-sS", "--max-time", "10", "-D", "-"]);
    cmd.args(args);
    cmd.arg(format!("http://{}{path}", Cluster::POD_IP));
    let out = output_within(&mut cmd, WAIT).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    served_by(&text)
}

/// (x-served-by, body) of a response printed by `curl -D -`.
fn served_by(text: &str) -> (String, String) {
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

/// `curl -H h...` arguments.
fn headers<'a>(hs: &[&'a str]) -> Vec<&'a str> {
    hs.iter().flat_map(|h| ["-H", *h]).collect()
}

fn json_line(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Runs `cmd` (a load client printing one JSON summary line) and returns the summary.
fn summary(mut cmd: Command, timeout: Duration) -> Value {
    let out = output_within(&mut cmd, timeout).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_line(stdout.lines().last().unwrap_or(""))
}

/// `http_mix.py` from the client namespace against the pod's `port`: `count` requests over
/// `conns` keep-alive connections; each request's answer is checked against its kind's
/// `expect` (`kinds` is a JSON list, see the script).
fn http_mix(c: &Cluster, port: u16, count: usize, conns: usize, kinds: &str) -> Value {
    let mut cmd = c.client(PY);
    no_proxy(&mut cmd)
        .arg("-B")
        .arg(service("http_mix.py"))
        .arg(Cluster::POD_IP.to_string())
        .arg(port.to_string())
        .arg(count.to_string())
        .arg(conns.to_string())
        .arg(kinds);
    summary(cmd, Duration::from_secs(120))
}

/// Checks a load client's summary: everything sent, everything answered by the right side,
/// and `by` (served-by → count) as expected when given.
fn assert_all_ok(s: &Value, count: usize, what: &str) {
    assert_eq!(s["sent"], count, "{what}: {s}");
    assert_eq!(s["ok"], count, "{what}: {s}");
}

/// Pulls every JSON request line the program printed so far (waiting until `n` arrived).
fn wait_requests(app: &mut ManagedChild, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines: Vec<Value> = app
            .stdout_lines()
            .iter()
            .filter(|l| l.contains("\"method\""))
            .map(|l| json_line(l))
            .collect();
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pod's nat rules as iptables-save and nft print them (run inside the pod namespace).
fn pod_rules(c: &Cluster) -> String {
    let ipt = run_ok(&mut c.pod("iptables-save")).unwrap();
    let nft = run_ok(c.pod("nft").args(["list", "ruleset"])).unwrap_or_default();
    format!("{ipt}\n{nft}")
}

/// Chains `MIRRORD_<id>` in the pod's nat table, by id.
fn agent_ids(c: &Cluster) -> Vec<String> {
    let ipt = run_ok(c.pod("iptables-save").args(["-t", "nat"])).unwrap();
    ipt.lines()
        .filter_map(|l| l.strip_prefix(":MIRRORD_"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Whether anything in the pod's rules mentions agent `id` (its chain, jumps to it, its nft
/// table).
fn mentions_agent(rules: &str, id: &str) -> bool {
    rules.contains(&format!("MIRRORD_{id}")) || rules.contains(&format!("mirrord_{id}"))
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

/// Waits (bounded) until no agent has rules in the pod any more: the sessions ended.
fn wait_no_agents(c: &Cluster) {
    poll_until(Duration::from_secs(5), || agent_ids(c).is_empty())
        .unwrap_or_else(|| panic!("agents' rules left: {}", pod_rules(c)));
}

/// pids of this cluster's agents (their sockets are in the test's runtime dir), without their
/// guards (forks of the agent, named `mirrord-guard`).
fn agent_pids(c: &Cluster) -> Vec<i32> {
    let run_dir = c.workdir().join("run");
    let out = Command::new("pgrep")
        .args(["-f", &format!("mirrord-agent.*{}", run_dir.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid: &i32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() != "mirrord-guard")
        })
        .collect()
}

/// Runs a program under mirrord that is expected to fail; returns its output.
fn run_failing(mut cmd: Command) -> Output {
    let out = output_within(&mut cmd, Duration::from_secs(60)).unwrap();
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
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
    let (by, body) = curl_pod(&c, "/hello", &headers(&["x-user: anyone"]));
    assert_eq!(
        (by.as_str(), body.as_str()),
        ("local", "local: GET /hello\n")
    );
    let seen = app.wait_line("\"path\": \"/hello\"", WAIT).unwrap();
    // The program sees the real client and the pod's address, as if it ran in the pod:
    // accept()'s address ("peer"), getpeername() and getsockname() of the accepted socket.
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
    // Nothing of it reached the pod.
    assert!(
        !c.pod_requests().iter().any(|r| r.contains("/hello")),
        "{:?}",
        c.pod_requests()
    );
    // Keep-alive: several requests on one connection all go to the program.
    let s = http_mix(
        &c,
        80,
        50,
        1,
        r#"[{"method":"GET","path":"/ka","expect":"local"},
            {"method":"POST","path":"/ka","body":"x","expect":"local"}]"#,
    );
    assert_all_ok(&s, 50, "keep-alive steal");
    assert_eq!(s["connects"], 1, "{s}");
    app.kill().unwrap();
    wait_no_agents(&c);
    let (by, _) = curl_pod(&c, "/again", &[]);
    assert_eq!(by, "pod");
}

/// Which process holds the other end of the connection established to `127.0.0.1:port` in
/// dev (the program's listener), and from which address: `ss`'s users column and local
/// address of the connecting socket.
fn delivering_process(c: &Cluster, port: u16) -> (String, String) {
    let out = output_within(c.dev("ss").args(["-tnpH", "state", "established"]), WAIT).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let peer = format!("127.0.0.1:{port}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some(peer.as_str()))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one connection to the program expected:\n{text}"
    );
    let column = |n| lines[0].split_whitespace().nth(n).unwrap_or("").to_owned();
    (column(4), column(2))
}

/// A connection from the client namespace that stays open after one request (keep-alive).
fn held_connection(c: &Cluster) -> (ManagedChild, u16) {
    let script = "import http.client,sys,time\n\
        c=http.client.HTTPConnection(sys.argv[1],80,timeout=10)\n\
        c.request('GET','/held')\n\
        r=c.getresponse()\n\
        r.read()\n\
        print('served-by', r.getheader('x-served-by'), c.sock.getsockname()[1], flush=True)\n\
        time.sleep(60)\n";
    let mut cmd = c.client(PY);
    no_proxy(&mut cmd)
        .args(["-c", script])
        .arg(Cluster::POD_IP.to_string());
    let mut child = c.spawn(cmd).unwrap();
    let line = child.wait_line("served-by", WAIT).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.get(1), Some(&"local"), "{line}");
    let port = words.get(2).and_then(|p| p.parse().ok()).unwrap();
    (child, port)
}

/// Steal with a local agent: the agent connects stolen connections to the program itself (one
/// relay, no round trip through the session), and the program still sees the real client.
/// With the session's relay forced, the session does it, as for a cluster agent.
#[test]
fn a_local_agent_delivers_stolen_connections_to_the_program_itself() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "steal.json",
        r#"{"feature":{"network":{"incoming":"steal"}}}"#,
    );
    for (relay, expected) in [(false, "\"mirrord-agent\""), (true, "\"mirrord\"")] {
        let mut cmd = local_app_cmd(&c, &cfg, 80, &[]);
        if relay {
            cmd.env("MIRRORD_SESSION_RELAY", "1");
        }
        let mut app = c.spawn(cmd).unwrap();
        app.wait_line("listening", WAIT).unwrap();
        let (mut held, client_port) = held_connection(&c);
        let (users, source) = delivering_process(&c, 80);
        assert!(
            users.contains(&format!("(({expected}")),
            "relay forced: {relay}; the program's peer is held by {users}"
        );
        // The agent connects from an address that names the client (its port, and an index
        // for its IP), so the layer knows it without asking the session after the first time.
        let delivery = mirrord_protocol::net::DeliverySource::of(source.parse().unwrap());
        assert_eq!(
            delivery.map(|d| d.port),
            (!relay).then_some(client_port),
            "relay forced: {relay}; source {source}"
        );
        let seen = app.wait_line("\"path\": \"/held\"", WAIT).unwrap();
        assert!(
            seen.contains(&format!("\"peer\": \"{}:", Cluster::CLIENT_IP)),
            "{seen}"
        );
        // New connections, back to back: each is accepted with its real client.
        let s = http_mix(
            &c,
            80,
            40,
            40,
            r#"[{"method":"GET","path":"/each","expect":"local"}]"#,
        );
        assert_all_ok(&s, 40, "new connections");
        let peers: Vec<Value> = wait_requests(&mut app, 41, WAIT)
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/each/")))
            .collect();
        assert_eq!(peers.len(), 40);
        let mut ports = std::collections::HashSet::new();
        for r in &peers {
            let peer = r["peer"].as_str().unwrap_or("");
            assert!(peer.starts_with(&format!("{}:", Cluster::CLIENT_IP)), "{r}");
            ports.insert(peer.to_owned());
        }
        // Each connection shows its own client port, never a remembered one.
        assert_eq!(ports.len(), 40, "{ports:?}");
        held.kill().unwrap();
        app.kill().unwrap();
        wait_no_agents(&c);
    }
}

/// Mirror: the client gets the pod's own answer, and the program sees the same request.
#[test]
fn mirror_copies_requests_to_the_program_while_the_pod_answers() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "mirror.json",
        r#"{"feature":{"network":{"incoming":"mirror"}}}"#,
    );
    let mut app = local_app(&c, &cfg, 80, &[]);
    let (by, body) = curl_pod(
        &c,
        "/mirror?q=1",
        &[
            "-X",
            "POST",
            "-H",
            "x-custom: forty-two",
            "-H",
            "content-type: text/plain",
            "--data-binary",
            "hello mirrored body",
        ],
    );
    assert_eq!(
        (by.as_str(), body.as_str()),
        ("pod", "pod: POST /mirror?q=1\n")
    );
    let line = app.wait_line("\"path\": \"/mirror?q=1\"", WAIT).unwrap();
    let seen = json_line(&line);
    assert_eq!(seen["method"], "POST", "{seen}");
    assert_eq!(seen["headers"]["x-custom"], "forty-two", "{seen}");
    assert_eq!(seen["headers"]["content-type"], "text/plain", "{seen}");
    assert_eq!(seen["body"], "hello mirrored body", "{seen}");
    assert!(
        seen["peer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", Cluster::CLIENT_IP)),
        "{seen}"
    );
    assert!(c.pod_requests().contains(&"POST /mirror?q=1".to_owned()));
}

/// Mirror: a slow program (3 s per request) never delays the pod's answer.
#[test]
fn mirror_does_not_wait_for_a_slow_program() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "mirror.json",
        r#"{"feature":{"network":{"incoming":"mirror"}}}"#,
    );
    let mut app = local_app(&c, &cfg, 80, &["--delay", "3"]);
    for i in 0..3 {
        let path = format!("/slow/{i}");
        let started = Instant::now();
        let (by, body) = curl_pod(&c, &path, &[]);
        let took = started.elapsed();
        assert_eq!(by, "pod");
        assert_eq!(body, format!("pod: GET {path}\n"));
        assert!(
            took < Duration::from_millis(1500),
            "request {i} took {took:?}"
        );
    }
    // The program still got every request (it prints before its delay).
    let seen = wait_requests(&mut app, 3, WAIT);
    assert_eq!(seen.len(), 3, "{seen:?}");
}

const ALICE_BOB_NONE: &str = r#"[
    {"method":"GET","path":"/alice","headers":{"x-user":"alice"},"expect":"local"},
    {"method":"POST","path":"/alice","headers":{"x-user":"alice"},"body":"a","expect":"local"},
    {"method":"GET","path":"/bob","headers":{"x-user":"bob"},"expect":"pod"},
    {"method":"POST","path":"/bob","headers":{"x-user":"bob"},"body":"b","expect":"pod"},
    {"method":"GET","path":"/none","expect":"pod"}
]"#;

/// A header-filtered steal over HTTP/1.1 keep-alive: 1,000 mixed requests on 4 connections,
/// each answered by the right side, none lost, keep-alive kept.
#[test]
fn filtered_steal_routes_each_keep_alive_request_by_header() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "filtered.json",
        r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice"}}}}}"#,
    );
    let mut app = local_app(&c, &cfg, 80, &[]);
    let s = http_mix(&c, 80, 1000, 4, ALICE_BOB_NONE);
    assert_all_ok(&s, 1000, "header filter");
    assert_eq!(s["connects"], 4, "keep-alive connections were closed: {s}");
    let local = s["by"]["local"].as_u64().unwrap() as usize;
    let pod = s["by"]["pod"].as_u64().unwrap() as usize;
    assert!(local > 300 && pod > 500, "{s}");
    // Exactly the stolen requests reached the program, exactly the others the pod.
    let seen = wait_requests(&mut app, local, WAIT);
    assert_eq!(seen.len(), local);
    assert!(seen.iter().all(|r| r["headers"]["x-user"] == "alice"));
    assert_eq!(c.pod_requests().len(), pod);
}

/// Path, method and `all_of` filters, each proven with a few hundred mixed keep-alive requests.
#[test]
fn path_method_and_all_of_filters_route_each_request() {
    let cases = [
        (
            r#"{"path_filter":"^/api/"}"#,
            r#"[{"method":"GET","path":"/api/v1","expect":"local"},
                {"method":"POST","path":"/api/v2","body":"x","expect":"local"},
                {"method":"GET","path":"/apix","expect":"pod"},
                {"method":"GET","path":"/other/api/","expect":"pod"}]"#,
        ),
        (
            r#"{"method_filter":"POST"}"#,
            r#"[{"method":"POST","path":"/m","body":"x","expect":"local"},
                {"method":"GET","path":"/m","expect":"pod"},
                {"method":"PUT","path":"/m","body":"y","expect":"pod"},
                {"method":"DELETE","path":"/m","expect":"pod"}]"#,
        ),
        (
            r#"{"all_of":[{"header":"x-user: alice"},{"path":"^/api/"}]}"#,
            r#"[{"method":"GET","path":"/api/a","headers":{"x-user":"alice"},"expect":"local"},
                {"method":"GET","path":"/web/a","headers":{"x-user":"alice"},"expect":"pod"},
                {"method":"GET","path":"/api/b","headers":{"x-user":"bob"},"expect":"pod"},
                {"method":"GET","path":"/api/n","expect":"pod"}]"#,
        ),
    ];
    let c = Cluster::start().unwrap();
    for (i, (filter, kinds)) in cases.iter().enumerate() {
        let cfg = config(
            &c,
            &format!("filter{i}.json"),
            &format!(
                r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","http_filter":{filter}}}}}}}}}"#
            ),
        );
        let mut app = local_app(&c, &cfg, 80, &[]);
        let before = c.pod_requests().len();
        let s = http_mix(&c, 80, 300, 3, kinds);
        assert_all_ok(&s, 300, filter);
        assert_eq!(s["connects"], 3, "{filter}: {s}");
        let local = s["by"]["local"].as_u64().unwrap() as usize;
        let pod = s["by"]["pod"].as_u64().unwrap() as usize;
        assert!(local > 30 && pod > 100, "{filter}: {s}");
        assert_eq!(
            wait_requests(&mut app, local, WAIT).len(),
            local,
            "{filter}"
        );
        assert_eq!(c.pod_requests().len() - before, pod, "{filter}");
        app.kill().unwrap();
        // The session is gone with the program: the pod serves everything again.
        wait_no_agents(&c);
        let (by, _) = curl_pod(&c, "/api/after", &["-X", "POST", "-H", "x-user: alice"]);
        assert_eq!(by, "pod", "{filter}");
    }
}

/// A header-filtered steal over HTTP/2 (h2c, prior knowledge): 1,000 requests with mixed
/// headers multiplexed on one session; the pod's and the program's h2 servers each get theirs.
/// (The filter applies to 8080 by default: `http_filter.ports` is `[80, 8080]`.)
/// gRPC's shape is covered: every response ends with trailers (`grpc-status`), which must reach
/// the client from whichever side answered.
#[test]
fn filtered_steal_routes_http2_streams_by_header() {
    let c = Cluster::start().unwrap();
    let h2 = service("h2.js").display().to_string();
    let mut pod_h2 = c
        .spawn_in(c.ns_pod(), "node", [h2.as_str(), "server", "8080", "pod"])
        .unwrap();
    pod_h2.wait_line("listening", WAIT).unwrap();
    let cfg = config(
        &c,
        "filtered.json",
        r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice"}}}}}"#,
    );
    let mut local_h2 = c
        .spawn(mirrord(&c, &cfg, "node", &[&h2, "server", "8080", "local"]))
        .unwrap();
    local_h2.wait_line("listening", WAIT).unwrap();
    let mut client = c.client("node");
    no_proxy(&mut client).args([
        h2.as_str(),
        "client",
        &format!("http://{}:8080", Cluster::POD_IP),
        "1000",
        "50",
        ALICE_BOB_NONE,
    ]);
    let s = summary(client, Duration::from_secs(120));
    assert_all_ok(&s, 1000, "h2 header filter");
    let local = s["by"]["local"].as_u64().unwrap();
    let pod = s["by"]["pod"].as_u64().unwrap();
    assert!(local > 300 && pod > 500, "{s}");
}

/// Two sessions steal the pod's port 80 at once with different header filters: each gets its
/// own requests only, the rest reach the pod. An unfiltered steal cannot join them.
#[test]
fn two_sessions_steal_one_port_with_different_filters() {
    let c = Cluster::start().unwrap();
    let alice = config(
        &c,
        "alice.json",
        r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice"}}}}}"#,
    );
    let bob = config(
        &c,
        "bob.json",
        r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: bob"}}}}}"#,
    );
    let whole = config(
        &c,
        "whole.json",
        r#"{"feature":{"network":{"incoming":"steal"}}}"#,
    );
    // Both programs bind 80 on the developer's machine: the second gets another free port.
    let mut a = local_app(&c, &alice, 80, &["--name", "alice"]);
    let mut b = local_app(&c, &bob, 80, &["--name", "bob"]);
    let kinds = r#"[
        {"method":"GET","path":"/a","headers":{"x-user":"alice"},"expect":"alice"},
        {"method":"POST","path":"/a","headers":{"x-user":"alice"},"body":"1","expect":"alice"},
        {"method":"GET","path":"/b","headers":{"x-user":"bob"},"expect":"bob"},
        {"method":"POST","path":"/b","headers":{"x-user":"bob"},"body":"2","expect":"bob"},
        {"method":"GET","path":"/n","headers":{"x-user":"carol"},"expect":"pod"},
        {"method":"GET","path":"/n","expect":"pod"}
    ]"#;
    let s = http_mix(&c, 80, 600, 3, kinds);
    assert_all_ok(&s, 600, "two filtered sessions");
    let n_alice = s["by"]["alice"].as_u64().unwrap() as usize;
    let n_bob = s["by"]["bob"].as_u64().unwrap() as usize;
    let n_pod = s["by"]["pod"].as_u64().unwrap() as usize;
    assert!(n_alice > 100 && n_bob > 100 && n_pod > 100, "{s}");
    let seen_a = wait_requests(&mut a, n_alice, WAIT);
    assert_eq!(seen_a.len(), n_alice);
    assert!(seen_a.iter().all(|r| r["headers"]["x-user"] == "alice"));
    let seen_b = wait_requests(&mut b, n_bob, WAIT);
    assert_eq!(seen_b.len(), n_bob);
    assert!(seen_b.iter().all(|r| r["headers"]["x-user"] == "bob"));
    // The alice program sees the real client, even though bob's agent saw it first.
    assert!(
        seen_a
            .iter()
            .all(|r| r["peer"].as_str().unwrap().starts_with("10.244.0.20:")),
        "{:?}",
        seen_a.first()
    );
    assert_eq!(c.pod_requests().len(), n_pod);

    // An unfiltered steal would take their requests: its listen fails, and mirrord says why.
    let out = run_failing(local_app_cmd(&c, &whole, 80, &["--name", "whole"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("unfiltered steal refused:\n{stderr}");
    assert!(
        stderr.contains("port 80") && stderr.contains("HTTP filter"),
        "{stderr}"
    );
    // The filtered sessions are untouched.
    assert_eq!(curl_pod(&c, "/still", &headers(&["x-user: bob"])).0, "bob");

    // And the other way round: with an unfiltered steal in place, a filtered one fails.
    a.kill().unwrap();
    b.kill().unwrap();
    wait_no_agents(&c);
    let _w = local_app(&c, &whole, 80, &["--name", "whole"]);
    assert_eq!(curl_pod(&c, "/w", &[]).0, "whole");
    let out = run_failing(local_app_cmd(&c, &alice, 80, &["--name", "alice"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("port 80") && stderr.contains("stolen whole"),
        "{stderr}"
    );
    assert_eq!(curl_pod(&c, "/w2", &headers(&["x-user: alice"])).0, "whole");
}

/// A websocket upgrade that matches the filter reaches the program and stays connected both ways.
#[test]
fn websocket_upgrade_matching_the_filter_is_stolen() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "filtered.json",
        r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice"}}}}}"#,
    );
    let mut app = local_app(&c, &cfg, 80, &[]);
    let ws = |extra: &[&str]| {
        let mut cmd = c.client(PY);
        cmd.arg("-B")
            .arg(service("ws_client.py"))
            .args([&Cluster::POD_IP.to_string(), "80", "hello over ws"])
            .args(extra);
        summary(cmd, WAIT)
    };
    let r = ws(&["x-user: alice"]);
    assert!(r["status"].as_str().unwrap().contains(" 101"), "{r}");
    assert_eq!(r["accept_ok"], true, "{r}");
    assert_eq!(r["reply"], "local echo: hello over ws", "{r}");
    let line = app.wait_line("\"path\": \"/ws\"", WAIT).unwrap();
    assert_eq!(json_line(&line)["headers"]["upgrade"], "websocket");
    // Not matching: the pod (which does not speak websocket) answers the handshake.
    let r = ws(&["x-user: bob"]);
    assert!(r["status"].as_str().unwrap().contains(" 200"), "{r}");
    assert_eq!(r["served_by"], "pod", "{r}");
}

/// `port_mapping`: the program listens on 8081 and gets the pod's port 80.
#[test]
fn port_mapping_delivers_the_pod_port_to_another_local_port() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "mapping.json",
        r#"{"feature":{"network":{"incoming":{"mode":"steal","port_mapping":[[8081,80]]}}}}"#,
    );
    let mut app = local_app(&c, &cfg, 8081, &[]);
    assert_eq!(
        curl_pod(&c, "/mapped", &[]),
        ("local".to_owned(), "local: GET /mapped\n".to_owned())
    );
    let line = app.wait_line("\"path\": \"/mapped\"", WAIT).unwrap();
    assert!(
        line.contains(&format!("\"sockname\": \"{}:80\"", Cluster::POD_IP)),
        "{line}"
    );
}

/// `ignore_ports`: the port is not subscribed, the pod keeps serving it, and the program still
/// listens on the developer's machine.
#[test]
fn ignore_ports_leaves_the_port_alone() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "ignore.json",
        r#"{"feature":{"network":{"incoming":{"mode":"steal","ignore_ports":[80]}}}}"#,
    );
    let mut app = local_app(&c, &cfg, 80, &[]);
    assert_eq!(curl_pod(&c, "/ignored", &[]).0, "pod");
    // Nothing was subscribed, so the agent set up no redirect at all.
    assert!(agent_ids(&c).is_empty(), "{}", pod_rules(&c));
    // Locally it is an ordinary listener on port 80.
    let out = output_within(
        no_proxy(&mut c.dev("curl")).args(["-sS", "--max-time", "10", "http://127.0.0.1:80/here"]),
        WAIT,
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "local: GET /here\n");
    app.wait_line("\"path\": \"/here\"", WAIT).unwrap();
}

/// `listen_ports`: the program listens on 80, gets the pod's port 80, and is bound locally at
/// 18080 (where local tools reach it).
#[test]
fn listen_ports_chooses_the_local_port() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "listen.json",
        r#"{"feature":{"network":{"incoming":{"mode":"steal","listen_ports":[[80,18080]]}}}}"#,
    );
    let mut app = local_app(&c, &cfg, 80, &[]);
    assert_eq!(curl_pod(&c, "/remote", &[]).0, "local");
    let out = output_within(
        no_proxy(&mut c.dev("curl")).args([
            "-sS",
            "--max-time",
            "10",
            "http://127.0.0.1:18080/direct",
        ]),
        WAIT,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "local: GET /direct\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = app.wait_line("\"path\": \"/direct\"", WAIT).unwrap();
    // A local client is left as it is (loopback peer).
    assert!(line.contains("\"peer\": \"127.0.0.1:"), "{line}");
}

/// Kubernetes probes stay with the pod during an unfiltered steal.
#[test]
fn unfiltered_steal_leaves_kube_probes_to_the_pod() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "steal.json",
        r#"{"feature":{"network":{"incoming":"steal"}}}"#,
    );
    let mut app = local_app(&c, &cfg, 80, &[]);
    assert_eq!(
        curl_pod(&c, "/healthz", &["-A", "kube-probe/1.29"]),
        ("pod".to_owned(), "pod: GET /healthz\n".to_owned())
    );
    assert_eq!(
        curl_pod(&c, "/work", &[]),
        ("local".to_owned(), "local: GET /work\n".to_owned())
    );
    // Mixed on keep-alive connections too.
    let s = http_mix(
        &c,
        80,
        200,
        2,
        r#"[{"method":"GET","path":"/healthz","headers":{"User-Agent":"kube-probe/1.29"},"expect":"pod"},
            {"method":"GET","path":"/work","expect":"local"}]"#,
    );
    assert_all_ok(&s, 200, "probes");
    let seen = wait_requests(&mut app, 1, WAIT);
    assert!(seen.iter().all(|r| r["path"] != "/healthz"), "{seen:?}");
}

/// SIGKILL of the agent during a steal: its guard removes its rules within a second, the pod
/// serves again, and another agent's rules stay.
#[test]
fn killed_agent_leaves_no_rules_and_other_agents_rules_survive() {
    let c = Cluster::start().unwrap();
    // "Another agent" (same naming scheme, id deadbeef) with a rule for an unused port. It is
    // alive: it listens on its mesh socket, as every agent with rules does (a new agent removes
    // the rules of agents whose socket is gone).
    let mut mesh_socket = c.pod(PY);
    mesh_socket.args([
        "-c",
        "import socket, time\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.bind('\\0mirrord-agent/deadbeef')\n\
             s.listen()\n\
             print('listening', flush=True)\n\
             time.sleep(300)\n",
    ]);
    let mut other_agent = c.spawn(mesh_socket).unwrap();
    other_agent.wait_line("listening", WAIT).unwrap();
    for args in [
        &["-t", "nat", "-N", "MIRRORD_deadbeef"][..],
        &[
            "-t",
            "nat",
            "-A",
            "MIRRORD_deadbeef",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            "9",
            "-j",
            "REDIRECT",
            "--to-ports",
            "10",
        ],
        &[
            "-t",
            "nat",
            "-I",
            "PREROUTING",
            "1",
            "-p",
            "tcp",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "MIRRORD_deadbeef",
        ],
    ] {
        run_ok(c.pod("iptables").args(args)).unwrap();
    }
    let foreign = || -> Vec<String> {
        run_ok(c.pod("iptables-save").args(["-t", "nat"]))
            .unwrap()
            .lines()
            .filter(|l| l.contains("MIRRORD_deadbeef"))
            .map(str::to_owned)
            .collect()
    };
    let foreign_before = foreign();
    assert_eq!(foreign_before.len(), 3, "{foreign_before:?}");

    let cfg = config(
        &c,
        "steal.json",
        r#"{"feature":{"network":{"incoming":"steal"}}}"#,
    );
    let mut app = local_app(&c, &cfg, 80, &[]);
    assert_eq!(curl_pod(&c, "/stolen", &[]).0, "local");
    let ids: Vec<String> = agent_ids(&c)
        .into_iter()
        .filter(|id| id != "deadbeef")
        .collect();
    assert_eq!(ids.len(), 1, "{}", pod_rules(&c));
    let id = &ids[0];
    let pids = agent_pids(&c);
    assert_eq!(pids.len(), 1, "{pids:?}");

    // SAFETY: plain kill(2) of a pid we just looked up.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let took = poll_until(Duration::from_secs(1), || {
        !mentions_agent(&pod_rules(&c), id)
    });
    assert!(
        took.is_some(),
        "rules of agent {id} still there 1 s after SIGKILL:\n{}",
        pod_rules(&c)
    );
    eprintln!("rules of agent {id} gone {took:?} after SIGKILL");
    assert_eq!(curl_pod(&c, "/back", &[]).0, "pod");
    assert_eq!(foreign(), foreign_before);
    let _ = app.kill();
}

/// Closing the listener releases the port at once (the session still runs); the program's exit
/// ends the session and removes the agent's chain.
#[test]
fn closing_the_listener_removes_the_rule_at_once() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "steal.json",
        r#"{"feature":{"network":{"incoming":"steal"}}}"#,
    );
    let go = c.workdir().join("go.fifo");
    run_ok(Command::new("mkfifo").arg(&go)).unwrap();
    let script = r#"
import json, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(16)
print(json.dumps({"listening": 80}), flush=True)
with open(sys.argv[1]) as f:
    f.readline()
    s.close()
    print("closed", flush=True)
    f.readline()
print("bye", flush=True)
"#;
    let go_s = go.display().to_string();
    let mut app = c
        .spawn(mirrord(&c, &cfg, PY, &["-c", script, &go_s]))
        .unwrap();
    app.wait_line("listening", WAIT).unwrap();
    let ids = agent_ids(&c);
    assert_eq!(ids.len(), 1, "{}", pod_rules(&c));
    let chain = format!("MIRRORD_{}", ids[0]);
    let rules_of =
        || run_ok(c.pod("iptables").args(["-t", "nat", "-S", &chain])).unwrap_or_default();
    assert!(rules_of().contains("--dport 80"), "{}", pod_rules(&c));

    let mut fifo = std::fs::OpenOptions::new().write(true).open(&go).unwrap();
    use std::io::Write;
    fifo.write_all(b"close\n").unwrap();
    app.wait_line("closed", WAIT).unwrap();
    let took = poll_until(Duration::from_secs(1), || {
        !rules_of().contains("--dport 80")
    });
    assert!(took.is_some(), "rule still there: {}", pod_rules(&c));
    // The session is still there (its chain exists), and the pod serves port 80 again.
    assert!(agent_ids(&c).contains(&ids[0]));
    assert_eq!(curl_pod(&c, "/after-close", &[]).0, "pod");

    fifo.write_all(b"exit\n").unwrap();
    drop(fifo);
    app.wait_line("bye", WAIT).unwrap();
    let status = app.wait_timeout(WAIT).unwrap().expect("mirrord exits");
    assert!(status.success());
    let took = poll_until(Duration::from_secs(1), || {
        !mentions_agent(&pod_rules(&c), &ids[0])
    });
    assert!(took.is_some(), "chain left: {}", pod_rules(&c));
}

/// A listener bound to loopback is never subscribed (in the pod it would not get the pod's
/// traffic either, and debuggers' inspectors listen there on random ports): the pod keeps
/// serving, no redirect exists, and the program is reachable locally.
#[test]
fn loopback_listeners_are_never_subscribed() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "steal.json",
        r#"{"feature":{"network":{"incoming":"steal"}}}"#,
    );
    let _app = local_app(&c, &cfg, 80, &["--bind", "127.0.0.1"]);
    let (by, _) = curl_pod(&c, "/not-for-loopback", &[]);
    assert_eq!(by, "pod");
    assert!(!pod_rules(&c).contains("--dport 80"), "{}", pod_rules(&c));
    let out = output_within(
        no_proxy(&mut c.dev("curl")).args(["-sS", "-D", "-", "http://127.0.0.1:80/local"]),
        WAIT,
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("x-served-by: local"));
}

/// An IPv6 client of a stolen port reaches the program too (ip6tables redirect, dual-stack agent
/// listener, IPv6 original destination), and the program sees its IPv6 address.
#[test]
fn ipv6_clients_are_stolen_too() {
    let c = Cluster::start().unwrap();
    for (ns, addr) in [
        (c.ns_pod(), "fd00:6::10/64"),
        (c.ns_client(), "fd00:6::20/64"),
    ] {
        run_ok(Command::new("ip").args(["-n", ns, "addr", "add", addr, "dev", "eth0", "nodad"]))
            .unwrap();
    }
    let cfg = config(
        &c,
        "steal.json",
        r#"{"feature":{"network":{"incoming":"steal"}}}"#,
    );
    // An IPv6 program (in the pod it would be the one to get IPv6 clients).
    let mut app = local_app(&c, &cfg, 80, &["--bind", "::"]);
    let out = output_within(
        no_proxy(&mut c.client("curl")).args([
            "-sS",
            "-g",
            "--max-time",
            "10",
            "-D",
            "-",
            "http://[fd00:6::10]/v6",
        ]),
        WAIT,
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("x-served-by: local"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = app.wait_line("\"path\": \"/v6\"", WAIT).unwrap();
    assert!(seen.contains("\"peer\": \"fd00:6::20:"), "{seen}");
    assert!(seen.contains("\"sockname\": \"fd00:6::10:80\""), "{seen}");
    // IPv4 clients still reach the IPv6 program, shown as v4-mapped addresses as the kernel would.
    let (by, _) = curl_pod(&c, "/v4", &[]);
    assert_eq!(by, "local");
}

/// 1,000 connections opened at once from the client namespace, each sending one request only
/// after all of them connected (so all 1,000 are stolen at the same time); each answer must come
/// from the program in dev. Bounded by the script's socket timeouts and a 120 s deadline.
const THOUSAND_CLIENTS: &str = r#"
import asyncio, resource, sys
N = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < N + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, N + 256), hard))
async def main():
    connected = 0
    all_in = asyncio.Event()
    errors = []
    async def one(i):
        nonlocal connected
        w = None
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("10.244.0.10", 80), 20)
        except Exception as e:
            errors.append(f"connect {i}: {e!r}")
        connected += 1
        if connected == N:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 60)
        if w is None:
            return
        try:
            w.write(f"GET /c/{i} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n".encode())
            await w.drain()
            resp = await asyncio.wait_for(r.read(), 60)
            want = f"local: GET /c/{i}\n".encode()
            if b"x-served-by: local" not in resp.lower() or not resp.endswith(want):
                errors.append(f"answer {i}: {resp[:200]!r}")
        except Exception as e:
            errors.append(f"request {i}: {e!r}")
        finally:
            w.close()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(N))), 120)
    print(f"errors {len(errors)}", errors[:5])
asyncio.run(main())
"#;

/// Issue 14, point 3: 1,000 concurrent connections to a stolen port, 0 errors.
#[test]
fn a_thousand_concurrent_connections_are_stolen_without_errors() {
    const N: usize = 1000;
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "steal.json",
        r#"{"feature":{"network":{"incoming":"steal"}}}"#,
    );
    let mut cmd = local_app_cmd(&c, &cfg, 80, &[]);
    // The usual soft open-file limit (1,024; this machine's may be higher): the session and the
    // agent need ~2 descriptors per stolen connection and must raise their own limit.
    // SAFETY: one system call between fork and exec, nothing allocated.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_max >= 4096 {
                lim.rlim_cur = 1024;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
            Ok(())
        });
    }
    let mut app = c.spawn(cmd).unwrap();
    app.wait_line("listening", WAIT).unwrap();
    let mut cmd = c.client(PY);
    no_proxy(&mut cmd).args(["-B", "-c", THOUSAND_CLIENTS, &N.to_string()]);
    let out = output_within(&mut cmd, Duration::from_secs(150)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("errors 0 "), "{stdout}");
    // The program saw every one of them, and the pod none.
    let seen = wait_requests(&mut app, N, WAIT);
    assert_eq!(seen.len(), N);
    assert!(
        !c.pod_requests().iter().any(|r| r.contains("/c/")),
        "{:?}",
        c.pod_requests()
    );
}

/// Packet sockets open in the pod's network namespace (`/proc/net/packet` lists them per
/// namespace), the header line left out.
fn pod_packet_sockets(c: &Cluster) -> usize {
    let table = run_ok(c.pod("cat").arg("/proc/net/packet")).unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Mirror by capture (the default): the pod's port is not redirected (no chain of the agent in
/// the pod's nat table, no nft table), a packet socket captures it instead, the program still
/// gets its copy with the real client, and when the session ends the socket is gone too.
#[test]
fn mirror_by_capture_adds_no_rule_and_leaves_no_socket() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "mirror.json",
        r#"{"feature":{"network":{"incoming":"mirror"}}}"#,
    );
    assert_eq!(pod_packet_sockets(&c), 0);
    let mut app = local_app(&c, &cfg, 80, &[]);
    let nat = run_ok(c.pod("iptables-save").args(["-t", "nat"])).unwrap();
    assert!(
        !nat.contains("MIRRORD"),
        "a redirect while mirroring: {nat}"
    );
    assert!(
        !pod_rules(&c).contains("mirrord"),
        "a rule while mirroring: {}",
        pod_rules(&c)
    );
    assert_eq!(pod_packet_sockets(&c), 1, "no capture socket in the pod");
    let (by, _) = curl_pod(&c, "/captured", &[]);
    assert_eq!(by, "pod");
    let line = app.wait_line("\"path\": \"/captured\"", WAIT).unwrap();
    let seen = json_line(&line);
    assert!(
        seen["peer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", Cluster::CLIENT_IP)),
        "{seen}"
    );
    app.kill().unwrap();
    let gone = poll_until(WAIT, || pod_packet_sockets(&c) == 0);
    assert!(gone.is_some(), "the capture socket outlived the session");
    assert!(!pod_rules(&c).contains("mirrord"), "{}", pod_rules(&c));
}

/// Mirror by capture: a large body (many segments, in both directions of the window) and
/// pipelined requests (several in one segment) reach the program intact and in order.
#[test]
fn mirror_by_capture_delivers_large_bodies_and_pipelined_requests_intact() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "mirror.json",
        r#"{"feature":{"network":{"incoming":"mirror"}}}"#,
    );
    let mut app = local_app(&c, &cfg, 80, &[]);
    // 780 KB of numbered lines (the program reads bodies up to 1 MiB).
    let body: String = (0..30_000)
        .map(|i| format!("line {i:08} of the body\n"))
        .collect();
    assert_eq!(body.len(), 780_000);
    let file = c.workdir().join("large-body");
    std::fs::write(&file, &body).unwrap();
    let data = format!("@{}", file.display());
    let (by, _) = curl_pod(&c, "/large", &["--data-binary", &data]);
    assert_eq!(by, "pod");
    let line = app.wait_line("\"path\": \"/large\"", WAIT).unwrap();
    let seen = json_line(&line);
    assert_eq!(seen["body"].as_str().map(str::len), Some(body.len()));
    assert!(seen["body"] == body.as_str(), "the body's copy differs");

    // 20 requests written at once on one connection; the last one closes it.
    let script = r#"
import socket, sys
host, n = sys.argv[1], int(sys.argv[2])
reqs = b"".join(
    b"GET /pipelined/%d HTTP/1.1\r\nHost: pod\r\n%s\r\n"
    % (i, b"Connection: close\r\n" if i == n - 1 else b"")
    for i in range(n)
)
s = socket.create_connection((host, 80), timeout=10)
s.sendall(reqs)
got = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
print(got.count(b"HTTP/1.1 200"))
"#;
    let mut cmd = c.client(PY);
    no_proxy(&mut cmd)
        .args(["-c", script])
        .arg(Cluster::POD_IP.to_string())
        .arg("20");
    let out = output_within(&mut cmd, WAIT).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "20",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = poll_until(WAIT, || {
        app.stdout_lines()
            .iter()
            .filter(|l| l.contains("/pipelined/"))
            .count()
            >= 20
    });
    assert!(seen.is_some(), "{:?}", app.stdout_lines());
    let paths: Vec<String> = app
        .stdout_lines()
        .iter()
        .filter(|l| l.contains("/pipelined/"))
        .map(|l| json_line(l)["path"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("/pipelined/{i}")).collect();
    assert_eq!(paths, expected);
}

/// `mirror_capture: false`: the relay mode still mirrors, through the agent's redirect (its
/// chain is in the pod's nat table while it does).
#[test]
fn mirror_through_the_relay_when_capture_is_off() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "mirror-relay.json",
        r#"{"feature":{"network":{"incoming":{"mode":"mirror","mirror_capture":false}}}}"#,
    );
    let mut app = local_app(&c, &cfg, 80, &[]);
    let ids = agent_ids(&c);
    assert_eq!(ids.len(), 1, "{}", pod_rules(&c));
    assert_eq!(pod_packet_sockets(&c), 0);
    let (by, body) = curl_pod(&c, "/relayed", &["--data-binary", "relayed body"]);
    assert_eq!(
        (by.as_str(), body.as_str()),
        ("pod", "pod: POST /relayed\n")
    );
    let line = app.wait_line("\"path\": \"/relayed\"", WAIT).unwrap();
    assert_eq!(json_line(&line)["body"], "relayed body");
    app.kill().unwrap();
    wait_no_agents(&c);
}

/// A capturing mirror next to another session's filtered steal of the same port: the stealing
/// agent does not hand connections to the capturing one (it copies them from the packets), and
/// its own connections to the pod carry the agent mark the capture leaves out, so the mirror
/// sees every request of the client exactly once (stolen ones included: capture sees what the
/// client sent to the pod's port), while each request is still served by the right side.
#[test]
fn a_capturing_mirror_and_another_sessions_filtered_steal_share_a_port() {
    let c = Cluster::start().unwrap();
    let mirror = config(
        &c,
        "mirror.json",
        r#"{"feature":{"network":{"incoming":"mirror"}}}"#,
    );
    let alice = config(
        &c,
        "alice.json",
        r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice"}}}}}"#,
    );
    let mut m = local_app(&c, &mirror, 80, &["--name", "mirror"]);
    let _a = local_app(&c, &alice, 80, &["--name", "alice"]);
    let kinds = r#"[
        {"method":"GET","path":"/a","headers":{"x-user":"alice"},"expect":"alice"},
        {"method":"POST","path":"/n","body":"n","expect":"pod"}
    ]"#;
    let s = http_mix(&c, 80, 300, 3, kinds);
    assert_all_ok(&s, 300, "mirror next to a filtered steal");
    let n_alice = s["by"]["alice"].as_u64().unwrap() as usize;
    let n_pod = s["by"]["pod"].as_u64().unwrap() as usize;
    assert!(n_alice > 50 && n_pod > 50, "{s}");
    // Everything the client sent, once; a copy too many would show up within the wait.
    let seen = wait_requests(&mut m, 301, Duration::from_secs(3));
    assert_eq!(seen.len(), 300, "{s}");
    let stolen = seen
        .iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("/a/"))
        .count();
    assert_eq!((stolen, seen.len() - stolen), (n_alice, n_pod));
    assert!(seen
        .iter()
        .all(|r| r["peer"].as_str().unwrap().starts_with("10.244.0.20:")));
    assert_eq!(c.pod_requests().len(), n_pod);
}

/// Mirror by capture sees the pod's own connections to itself (over `lo`, as the redirect's
/// OUTPUT rule did), each request once although `lo` shows every packet leaving and arriving.
#[test]
fn mirror_by_capture_copies_the_pods_own_loopback_connections_once() {
    let c = Cluster::start().unwrap();
    let cfg = config(
        &c,
        "mirror.json",
        r#"{"feature":{"network":{"incoming":"mirror"}}}"#,
    );
    let mut app = local_app(&c, &cfg, 80, &[]);
    for (host, path) in [
        ("127.0.0.1", "/lo/1"),
        (&*Cluster::POD_IP.to_string(), "/lo/2"),
    ] {
        let mut cmd = c.pod("curl");
        no_proxy(&mut cmd).args(["-sS", "--max-time", "10", "-D", "-"]);
        cmd.arg(format!("http://{host}{path}"));
        let out = output_within(&mut cmd, WAIT).unwrap();
        assert_eq!(
            served_by(&String::from_utf8_lossy(&out.stdout)).0,
            "pod",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Both copies, and no second copy of either within the wait.
    let seen = wait_requests(&mut app, 3, Duration::from_secs(3));
    let paths: Vec<&str> = seen.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/lo/1", "/lo/2"]);
}
