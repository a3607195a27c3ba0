//! Outgoing traffic and cluster DNS, end to end: real programs in the developer's (`dev`)
//! namespace, started with `mirrord exec`, reach services that only the pod can reach.

use mirrord_tests::{output_within, target_dir_bin, Cluster};
use std::process::{Command, Output};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

/// `mirrord exec -t pid/<pod> [extra] -- program args` in the dev namespace.
fn mirrord(c: &Cluster, extra: &[&str], program: &str, args: &[&str]) -> Command {
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.arg("exec")
        .arg("-t")
        .arg(format!("pid/{}", c.pod_pid()))
        .args(extra)
        .arg("--")
        .arg(program)
        .args(args)
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    cmd
}

fn run(mut cmd: Command) -> Output {
    output_within(&mut cmd, TIMEOUT).unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed ({}): stdout {} stderr {}",
        o.status,
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

#[test]
fn curl_reaches_a_cluster_service_by_every_name_form() {
    let c = Cluster::start().unwrap();
    for host in [
        "payment-service",
        "payment-service.payments",
        "payment-service.payments.svc.cluster.local",
    ] {
        let url = format!("http://{host}:8080/");
        let out = ok(run(mirrord(
            &c,
            &[],
            "curl",
            &["-sS", "-f", "--max-time", "20", &url],
        )));
        assert_eq!(out, "payment-service: hello\n", "{url}");
    }
    // Without mirrord the dev namespace cannot reach the service at all.
    let direct = run({
        let mut cmd = c.dev("curl");
        cmd.args([
            "-sS",
            "-f",
            "--max-time",
            "5",
            "http://payment-service:8080/",
        ]);
        cmd
    });
    assert!(!direct.status.success());
}
