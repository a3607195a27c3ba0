//! The CLI's other commands: `port-forward`, `dump`, `verify-config`, `schema`, `ls`.

use mirrord_tests::{output_within, target_dir_bin, Cluster, ManagedChild};
use std::process::{Command, Output};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn mirrord(c: &Cluster, args: &[&str]) -> Command {
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.args(args)
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    cmd
}

fn run(mut cmd: Command) -> Output {
    output_within(&mut cmd, Duration::from_secs(120)).unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Starts `mirrord port-forward ...` and waits for its ready line.
fn port_forward(c: &Cluster, args: &[&str]) -> ManagedChild {
    let target = format!("pid/{}", c.pod_pid());
    let mut all = vec!["port-forward", "-t", target.as_str()];
    all.extend_from_slice(args);
    let mut child = c.spawn(mirrord(c, &all)).unwrap();
    child.wait_line("port-forward ready", WAIT).unwrap();
    child
}

/// Rules of any mirrord agent in the pod's nat table.
fn agent_rules(c: &Cluster) -> Vec<String> {
    let out = run({
        let mut cmd = c.pod("iptables-save");
        cmd.args(["-t", "nat"]);
        cmd
    });
    text(&out.stdout)
        .lines()
        .filter(|l| l.contains("MIRRORD_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn local_forward_reaches_a_cluster_service_by_name_with_50_parallel_connections() {
    let c = Cluster::start().unwrap();
    let mut pf = port_forward(
        &c,
        &[
            "-L",
            "9000:payment-service.payments:8080",
            "-L",
            "9001:payment-service:9001/udp",
        ],
    );
    let out = run({
        let mut cmd = c.dev("curl");
        cmd.args(["-sS", "-f", "http://127.0.0.1:9000/"]);
        cmd
    });
    assert_eq!(
        text(&out.stdout),
        "payment-service: hello\n",
        "{}",
        text(&out.stderr)
    );
    // 50 connections at once from one process.
    let script = r#"
import concurrent.futures, urllib.request
def get(i):
    return urllib.request.urlopen('http://127.0.0.1:9000/whoami', timeout=30).read().decode()
with concurrent.futures.ThreadPoolExecutor(50) as ex:
    results = list(ex.map(get, range(50)))
print(sum(1 for r in results if r.startswith('payment-service: peer 10.244.0.10:')))
"#;
    let out = run({
        let mut cmd = c.dev("/usr/bin/python3");
        cmd.args(["-c", script]);
        cmd
    });
    assert_eq!(text(&out.stdout).trim(), "50", "{}", text(&out.stderr));
    // UDP: a datagram to the local port comes back from the cluster's echo service.
    let udp = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(b'ping through the pod', ('127.0.0.1', 9001))
print(s.recvfrom(1024)[0].decode())
"#;
    let out = run({
        let mut cmd = c.dev("/usr/bin/python3");
        cmd.args(["-c", udp]);
        cmd
    });
    assert!(
        text(&out.stdout).contains("ping through the pod"),
        "{} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    pf.signal(libc::SIGINT).unwrap();
    let status = pf
        .wait_timeout(WAIT)
        .unwrap()
        .expect("port-forward ends on Ctrl-C");
    assert!(status.success(), "{status}");
}

#[test]
fn remote_forward_serves_the_pods_port_locally_until_ctrl_c() {
    let c = Cluster::start().unwrap();
    // A server on the developer's machine, port 8081.
    let mut local = c
        .spawn({
            let mut cmd = c.dev("/usr/bin/python3");
            cmd.args(["-B"])
                .arg(
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("services/local_http.py"),
                )
                .args(["8081", "--bind", "127.0.0.1"]);
            cmd
        })
        .unwrap();
    local.wait_line("listening", WAIT).unwrap();
    let mut pf = port_forward(&c, &["-R", "80:8081"]);
    let curl = || {
        let out = run({
            let mut cmd = c.client("curl");
            cmd.args([
                "-sS",
                "-D",
                "-",
                "--max-time",
                "10",
                &format!("http://{}/via-R", Cluster::POD_IP),
            ]);
            cmd
        });
        text(&out.stdout)
    };
    let answer = curl();
    assert!(answer.contains("x-served-by: local"), "{answer}");
    assert!(!agent_rules(&c).is_empty());
    pf.signal(libc::SIGINT).unwrap();
    let status = pf
        .wait_timeout(WAIT)
        .unwrap()
        .expect("port-forward ends on Ctrl-C");
    assert!(status.success(), "{status}");
    // Once mirrord has exited, the pod serves its port again and no rule is left.
    let answer = curl();
    assert!(
        answer.to_ascii_lowercase().contains("x-served-by: pod"),
        "{answer}"
    );
    assert_eq!(agent_rules(&c), Vec::<String>::new());
}

#[test]
fn verify_config_reports_file_line_and_column() {
    let c = Cluster::start().unwrap();
    let bad = c.workdir().join("bad.mirrord.json");
    std::fs::write(&bad, "{\n  \"feature\": {\n    \"network\": {\n      \"incoming\": {\"mode\": \"stael\"}\n    }\n  }\n}\n").unwrap();
    let out = run(mirrord(&c, &["verify-config", bad.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with(&format!("{}:4:", bad.display())), "{err}");
    assert!(err.contains("unknown variant `stael`"), "{err}");
    let good = c.workdir().join("good.json");
    std::fs::write(
        &good,
        r#"{"target": "pid/1", "feature": {"network": {"incoming": "steal"}}}"#,
    )
    .unwrap();
    let out = run(mirrord(&c, &["verify-config", good.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok (target: pid/1)"));
}

/// Every JSON example in the README is valid for both the generated schema (checked by an
/// independent validator) and the real parser; and the schema rejects what the parser rejects.
#[test]
fn schema_validates_the_readme_examples() {
    let c = Cluster::start().unwrap();
    let out = run(mirrord(&c, &["schema"]));
    assert!(out.status.success());
    let schema_path = c.workdir().join("schema.json");
    std::fs::write(&schema_path, &out.stdout).unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let examples: Vec<&str> = readme
        .split("```json\n")
        .skip(1)
        .filter_map(|s| s.split("\n```").next())
        .collect();
    assert!(examples.len() >= 2, "the README has example configurations");
    let validate = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft7Validator.check_schema(schema)
for path in sys.argv[2:]:
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(json.load(open(path))))
    print(path, 'valid' if not errors else 'invalid: ' + errors[0].message)
"#;
    let mut paths = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        let p = c.workdir().join(format!("example{i}.json"));
        std::fs::write(&p, ex).unwrap();
        let out = run(mirrord(&c, &["verify-config", p.to_str().unwrap()]));
        assert!(
            out.status.success(),
            "README example {i}: {}",
            text(&out.stderr)
        );
        paths.push(p.display().to_string());
    }
    let bad = c.workdir().join("unknown-key.json");
    std::fs::write(&bad, r#"{"feature": {"network": {"incomin": "steal"}}}"#).unwrap();
    paths.push(bad.display().to_string());
    let out = run({
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-c", validate]).arg(&schema_path).args(&paths);
        cmd
    });
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report} {}", text(&out.stderr));
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), paths.len(), "{report}");
    for l in &lines[..lines.len() - 1] {
        assert!(l.ends_with(" valid"), "{report}");
    }
    assert!(lines.last().unwrap().contains("invalid"), "{report}");
}

#[test]
fn ls_lists_local_targets() {
    let c = Cluster::start().unwrap();
    let out = run(mirrord(&c, &["ls", "--json"]));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["path"].as_str())
        .collect();
    assert!(
        paths.contains(&format!("netns/{}", c.ns_pod()).as_str()),
        "{paths:?}"
    );
}

/// Starts `mirrord dump -t pid/<pod> -p 80 [--json]` and waits until it watches.
fn dump(c: &Cluster, json: bool) -> ManagedChild {
    let target = format!("pid/{}", c.pod_pid());
    let mut args = vec!["dump", "-t", target.as_str(), "-p", "80"];
    if json {
        args.push("--json");
    }
    let mut child = c.spawn(mirrord(c, &args)).unwrap();
    child.wait_stderr_line("watching port(s) 80", WAIT).unwrap();
    child
}

fn curl_pod(c: &Cluster, path: &str) -> String {
    let out = run({
        let mut cmd = c.client("curl");
        cmd.args([
            "-sS",
            "-D",
            "-",
            "--max-time",
            "10",
            "-H",
            "x-test: dump-me",
        ])
        .arg(format!("http://{}{path}", Cluster::POD_IP));
        cmd
    });
    text(&out.stdout)
}

#[test]
fn dump_prints_requests_and_responses_while_the_pod_serves() {
    let c = Cluster::start().unwrap();
    let mut d = dump(&c, false);
    let answer = curl_pod(&c, "/dumped");
    assert!(
        answer.to_ascii_lowercase().contains("x-served-by: pod"),
        "{answer}"
    );
    assert!(answer.contains("pod: GET /dumped"), "{answer}");
    d.wait_line("> GET /dumped HTTP/1.1", WAIT).unwrap();
    d.wait_line("x-test: dump-me", WAIT).unwrap();
    d.wait_line("< HTTP/1.1 200 OK", WAIT).unwrap();
    d.wait_line("x-served-by: pod", WAIT).unwrap();
    d.signal(libc::SIGINT).unwrap();
    let status = d.wait_timeout(WAIT).unwrap().expect("dump ends on Ctrl-C");
    assert!(status.success(), "{status}");
    assert_eq!(
        agent_rules(&c),
        Vec::<String>::new(),
        "dump removed its rules"
    );
    // Raw bytes of a non-HTTP connection are shown escaped.
    let mut d = dump(&c, false);
    let out = run({
        let mut cmd = c.client("/usr/bin/python3");
        cmd.args([
            "-c",
            "import socket; s=socket.create_connection(('10.244.0.10',80),5); s.sendall(b'\\x01\\x02binary\\r\\n'); s.shutdown(1); s.recv(100)",
        ]);
        cmd
    });
    assert!(out.status.success(), "{}", text(&out.stderr));
    d.wait_line(r#"bytes: "\x01\x02binary\r\n""#, WAIT).unwrap();
}

#[test]
fn dump_json_lines_are_traffic_events() {
    let c = Cluster::start().unwrap();
    let mut d = dump(&c, true);
    let answer = curl_pod(&c, "/as-json?x=1");
    assert!(answer.contains("pod: GET /as-json?x=1"), "{answer}");
    let line = d.wait_line("\"incoming_request\"", WAIT).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["type"], "incoming_request");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/as-json?x=1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["headers"]["x-test"], "dump-me");
    assert_eq!(v["mode"], "mirror");
    for l in d.stdout_lines() {
        let e: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert!(e["type"].is_string(), "{l}");
    }
}

/// A `mirrord` whose agent or layer is missing (a build of the binaries alone skips the layer, a
/// cdylib) says which command builds the missing file, and starts nothing.
#[test]
fn a_missing_layer_or_agent_names_the_command_that_builds_it() {
    let built = target_dir_bin("mirrord");
    let dir = built
        .parent()
        .unwrap()
        .join(format!("missing-helpers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let lone = dir.join("mirrord");
    // A hard link, not a copy: a copy is open for writing while other tests fork, and a child
    // that inherited that descriptor makes executing the copy fail with ETXTBSY.
    std::fs::hard_link(&built, &lone).unwrap();
    let exec = |envs: &[(&str, &str)]| {
        let mut cmd = Command::new(&lone);
        // Never reaches a session: the helpers are located before anything starts.
        cmd.args(["exec", "-t", "pid/1", "--", "true"])
            .env_remove("MIRRORD_LAYER_FILE")
            .env_remove("MIRRORD_AGENT_PATH")
            .envs(envs.iter().copied());
        run(cmd)
    };

    // Nothing beside the executable: the agent is looked for first.
    let out = exec(&[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("mirrord-agent") && err.contains("cargo build -p mirrord-agent"),
        "{err}"
    );

    // The agent is found, the layer is not.
    let agent = target_dir_bin("mirrord-agent");
    let out = exec(&[("MIRRORD_AGENT_PATH", agent.to_str().unwrap())]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("libmirrord_layer.so") && err.contains("cargo build -p mirrord-layer"),
        "{err}"
    );

    // A variable naming a file that is not there is reported as such, with the same hint.
    let out = exec(&[
        ("MIRRORD_AGENT_PATH", agent.to_str().unwrap()),
        ("MIRRORD_LAYER_FILE", "/nonexistent/libmirrord_layer.so"),
    ]);
    let err = text(&out.stderr);
    assert!(
        err.contains("/nonexistent/libmirrord_layer.so")
            && err.contains("MIRRORD_LAYER_FILE")
            && err.contains("cargo build -p mirrord-layer"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The session raises its own open-file limit (it needs two descriptors per flow) but the
/// program starts with the limit `mirrord exec` was given.
#[test]
fn the_program_keeps_the_open_file_limit_it_was_given() {
    let c = Cluster::start().unwrap();
    let target = format!("pid/{}", c.pod_pid());
    let mut cmd = mirrord(
        &c,
        &["exec", "-t", &target, "--", "/bin/sh", "-c", "ulimit -Sn"],
    );
    // SAFETY: two system calls between fork and exec, nothing allocated.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur = lim.rlim_max.min(1000);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
            Ok(())
        });
    }
    let out = run(cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "1000");
}

/// `mirrord exec` catches Ctrl-C itself (it must outlive the command to remove its agent), but
/// the command gets the disposition it would get without mirrord: ignored under `nohup` or in a
/// script's background job, the default otherwise.
#[test]
fn the_program_keeps_the_ctrl_c_disposition_it_was_given() {
    let c = Cluster::start().unwrap();
    let target = format!("pid/{}", c.pod_pid());
    // Bit 1 of SigIgn is SIGINT (bit n-1 for signal n).
    let script = "import sys\n\
                  line = [l for l in open('/proc/self/status') if l.startswith('SigIgn:')][0]\n\
                  print('ignored' if int(line.split()[1], 16) & 2 else 'default')";
    for (ignore, expect) in [(true, "ignored"), (false, "default")] {
        let mut cmd = mirrord(
            &c,
            &[
                "exec",
                "-t",
                &target,
                "--",
                "/usr/bin/python3",
                "-c",
                script,
            ],
        );
        // SAFETY: one async-signal-safe call between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let action = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
                libc::signal(libc::SIGINT, action);
                Ok(())
            });
        }
        let out = run(cmd);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout).trim(),
            expect,
            "ignored by the caller: {ignore}"
        );
    }
}

/// A program may make the stderr it shares with `mirrord` non-blocking (Node does): `mirrord`'s
/// own log lines then meet `EAGAIN` once the pipe is full. They are dropped; the session and the
/// program go on (tracing-subscriber used to report the failed write with `eprintln!`, which
/// panics when stderr cannot be written).
#[test]
fn a_non_blocking_full_stderr_never_breaks_the_session() {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let c = Cluster::start().unwrap();
    let target = format!("pid/{}", c.pod_pid());
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just made these descriptors; nothing else owns them.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on our own pipe: the smallest buffer, and non-blocking writes (the shared
    // open file description is what the program would change).
    unsafe {
        libc::fcntl(write_end.as_raw_fd(), libc::F_SETPIPE_SZ, 4096);
        let flags = libc::fcntl(write_end.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(
            write_end.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        );
    }
    let program = "import socket\n\
                   for _ in range(20):\n    \
                   s = socket.create_connection(('payment-service', 8080), timeout=10)\n    \
                   s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n    \
                   assert s.recv(4096).startswith(b'HTTP/1.')\n    \
                   s.close()\n\
                   print('ok')";
    let mut cmd = mirrord(
        &c,
        &[
            "exec",
            "-t",
            &target,
            "--",
            "/usr/bin/python3",
            "-c",
            program,
        ],
    );
    // Trace level: far more than the pipe holds, from the session's start on.
    cmd.env("MIRRORD_LOG", "trace")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(write_end));
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().unwrap();
    // Let go of our copy of the write end (the Command holds it): EOF comes when mirrord exits.
    drop(cmd);
    let mut out = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = out.read_to_string(&mut v);
        v
    });
    // Nobody reads the pipe until the program has finished.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() >= deadline {
            // SAFETY: signalling the process group made for this child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap();
    let mut logged = vec![0u8; 4096];
    let n = std::fs::File::from(read_end).read(&mut logged).unwrap_or(0);
    assert!(
        status.as_ref().is_some_and(|s| s.success()) && stdout.trim() == "ok",
        "status {status:?}, stdout {stdout:?}, stderr (first 4 KiB) {}",
        text(&logged[..n])
    );
}
