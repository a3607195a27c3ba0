//! The JetBrains plugin's core (`jetbrains-plugin/core`, plain Java) against the real
//! `mirrord-server --stdio` on the simulated cluster.
//!
//! The Java integration tests (`MirrordServerIT`, run by JUnit's console launcher) run in the
//! cluster's `dev` namespace, start the daemon there through the core, launch real JVM programs
//! with the environment the core prepares, and send requests to the pod from the `client`
//! namespace (`ip netns exec <client> curl`, as an argument vector). This test builds the
//! cluster, hands it to them through `MIRRORD_IT_*` variables, fails if they fail, and checks
//! afterwards that no stolen request reached the pod.
//!
//! Ignored by default (it needs the compiled Java classes): `jetbrains-plugin/scripts/test.sh`
//! compiles them and runs `cargo test -p mirrord-tests --test jetbrains -- --ignored`, passing
//! `MIRRORD_JB_JAVA`, `MIRRORD_JB_JUNIT`, `MIRRORD_JB_CLASSPATH` and `MIRRORD_JB_PROGRAMS_CP`.

use mirrord_tests::{no_proxy, output_within, target_dir_bin, Cluster};
use std::path::PathBuf;
use std::time::Duration;

/// The whole Java run (each of its waits is bounded more tightly).
const JAVA_TIMEOUT: Duration = Duration::from_secs(240);

fn env_var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run jetbrains-plugin/scripts/test.sh"))
}

/// `ip` (iproute2), for the Java side's `ip netns exec <client> curl`.
fn ip_path() -> PathBuf {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("iproute2's ip is installed (the cluster needs it too)")
}

#[test]
#[ignore = "needs the compiled Java classes: run jetbrains-plugin/scripts/test.sh"]
fn jetbrains_core_drives_the_daemon_and_launches_java_programs() {
    let java = env_var("MIRRORD_JB_JAVA");
    let junit = env_var("MIRRORD_JB_JUNIT");
    let classpath = env_var("MIRRORD_JB_CLASSPATH");
    let programs = env_var("MIRRORD_JB_PROGRAMS_CP");
    let server = target_dir_bin("mirrord-server");
    // The daemon finds the agent and the layer next to itself.
    target_dir_bin("mirrord-agent");
    target_dir_bin("libmirrord_layer.so");

    let c = Cluster::start().unwrap();
    let work = c.workdir().join("jetbrains");
    let runtime = work.join("run");
    std::fs::create_dir_all(&runtime).unwrap();

    let mut cmd = c.dev(&java);
    cmd.arg("-jar")
        .arg(&junit)
        .arg("--disable-banner")
        .arg("--details=tree")
        .arg("--fail-if-no-tests")
        .arg("--class-path")
        .arg(&classpath)
        .arg("--select-class")
        .arg("io.mirrord.jetbrains.it.MirrordServerIT")
        .env("MIRRORD_IT_SERVER", &server)
        .env("MIRRORD_IT_TARGET", format!("pid/{}", c.pod_pid()))
        .env("MIRRORD_IT_WORKDIR", &work)
        .env("MIRRORD_IT_PROGRAMS_CP", &programs)
        .env("MIRRORD_IT_IP", ip_path())
        .env("MIRRORD_IT_CLIENT_NS", c.ns_client())
        .env("MIRRORD_IT_POD_URL", format!("http://{}/", Cluster::POD_IP))
        .env("MIRRORD_RUNTIME_DIR", &runtime)
        .env_remove("LD_PRELOAD")
        .env_remove("MIRRORD_ACTIVE");
    no_proxy(&mut cmd);
    let out = output_within(&mut cmd, JAVA_TIMEOUT).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let daemon_logs: Vec<String> = std::fs::read_dir(&work)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .map(|e| {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    format!(
                        "--- {} (last lines)\n{}",
                        e.path().display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "the Java integration tests failed ({}); daemon logs:\n{}",
        out.status,
        daemon_logs.join("\n")
    );
    assert!(
        stdout.contains("MirrordServerIT") && stdout.contains("2 tests successful"),
        "the Java integration tests did not run: {stdout}"
    );
    // Stolen requests never reached the pod; the others did.
    let reached = c.pod_requests();
    for stolen in [
        "GET /alice",
        "GET /alice-again",
        "GET /alice-reattached",
        "GET /alice-new-agent",
    ] {
        assert!(
            !reached.iter().any(|r| r == stolen),
            "{stolen} reached the pod: {reached:?}"
        );
    }
    for passed in ["GET /bob", "GET /alice-after-stop"] {
        assert!(
            reached.iter().any(|r| r == passed),
            "{passed} did not reach the pod: {reached:?}"
        );
    }
}
