//! Targets and failure reporting of `mirrord exec`.

use mirrord_tests::{output_within, target_dir_bin, Cluster};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn exec(c: &Cluster, target: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.args(["exec", "-t", target, "--", program])
        .args(args)
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    cmd
}

fn run(mut cmd: Command) -> Output {
    output_within(&mut cmd, Duration::from_secs(60)).unwrap()
}

#[test]
fn a_named_network_namespace_is_a_target() {
    let c = Cluster::start().unwrap();
    let target = format!("netns/{}", c.ns_pod());
    let out = run(exec(
        &c,
        &target,
        "curl",
        &["-sS", "-f", "http://payment-service:8080/whoami"],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("peer 10.244.0.10:"), "{stdout}");
}

#[test]
fn exit_code_of_the_command_is_returned() {
    let c = Cluster::start().unwrap();
    let target = format!("pid/{}", c.pod_pid());
    let out = run(exec(
        &c,
        &target,
        "/usr/bin/python3",
        &["-c", "import sys; sys.exit(42)"],
    ));
    assert_eq!(out.status.code(), Some(42));
    let out = run(exec(&c, &target, "/no/such/program", &[]));
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn bad_targets_are_clear_errors() {
    let c = Cluster::start().unwrap();
    for (target, needle) in [
        ("pid/999999999", "cannot open /proc/999999999/ns/net"),
        (
            "netns/no-such-namespace-xyz",
            "/var/run/netns/no-such-namespace-xyz",
        ),
        // No kubeconfig anywhere: the cluster connection says how to give one.
        ("pod/api", "no Kubernetes configuration"),
        ("bogus", "invalid target"),
    ] {
        let out = run(exec(&c, target, "true", &[]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{target}: {stderr}");
        assert!(stderr.contains(needle), "{target}: {stderr}");
    }
}

#[test]
fn a_bad_config_file_names_file_line_and_column() {
    let c = Cluster::start().unwrap();
    let path = c.workdir().join("bad.json");
    std::fs::write(
        &path,
        "{\n  \"feature\": {\n    \"network\": {\"outgoing\": {\"tcp\": \"yes\"}}\n  }\n}\n",
    )
    .unwrap();
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.args(["exec", "-f"])
        .arg(&path)
        .args(["-t", &format!("pid/{}", c.pod_pid()), "--", "true"]);
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("invalid type"), "{stderr}");
}

/// The agent dies while the program runs: the program's next connection fails at once, it
/// does not hang, and mirrord says why.
#[test]
fn a_dead_agent_gives_errors_not_a_hang() {
    let c = Cluster::start().unwrap();
    let script = r#"
import socket, sys, time, urllib.request
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
    let go_s = go.display().to_string();
    mirrord_tests::run_ok(Command::new("mkfifo").arg(&go)).unwrap();
    let cmd = exec(
        &c,
        &format!("pid/{}", c.pod_pid()),
        "/usr/bin/python3",
        &["-c", script, &go_s],
    );
    let mut child = c.spawn(cmd).unwrap();
    child
        .wait_line("payment-service: hello", Duration::from_secs(30))
        .unwrap();
    // Kill this session's agent (the only mirrord-agent whose socket is in this workdir).
    let run_dir = c.workdir().join("run");
    let agents = mirrord_tests::run_ok(
        Command::new("pgrep").args(["-f", &format!("mirrord-agent.*{}", run_dir.display())]),
    )
    .unwrap();
    let pid: i32 = agents.lines().next().unwrap().trim().parse().unwrap();
    // SAFETY: plain kill(2) of a pid we just looked up.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let started = Instant::now();
    std::fs::write(&go, "go\n").unwrap();
    let line = child
        .wait_line("failed after", Duration::from_secs(15))
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "{line}");
    let status = child
        .wait_timeout(Duration::from_secs(15))
        .unwrap()
        .expect("mirrord exits");
    assert!(status.success());
    let stderr = child.stderr_lines().join("\n");
    assert!(stderr.contains("the agent"), "{stderr}");
}
