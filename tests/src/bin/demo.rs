//! The README demo: builds a simulated cluster and shows a program on the developer's machine
//! reaching a cluster service by name through the target pod, with `mirrord exec`.

use anyhow::{bail, Result};
use mirrord_tests::{output_within, target_dir_bin, Cluster};
use std::time::Duration;

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn show(title: &str, out: &std::process::Output) {
    println!("--- {title} (exit {})", out.status.code().unwrap_or(-1));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        print!("{err}");
    }
    println!();
}

fn run() -> Result<()> {
    println!("Building a simulated cluster (network namespaces)...");
    let c = Cluster::start()?;
    println!(
        "  pod {} (target: pid/{}), payment-service {} in k8s namespace 'payments', cluster DNS {}",
        Cluster::POD_IP,
        c.pod_pid(),
        Cluster::SVC_IP,
        Cluster::DNS_IP
    );
    println!(
        "  the developer's machine is namespace {} (loopback only)\n",
        c.ns_dev()
    );
    let t = Duration::from_secs(60);
    let url = "http://payment-service:8080/";

    let mut plain = c.dev("curl");
    plain.args(["-sS", "--max-time", "5", url]);
    let without = output_within(&mut plain, t)?;
    show(&format!("curl {url}  (without mirrord)"), &without);

    let target = format!("pid/{}", c.pod_pid());
    let run_dir = c.workdir().join("run");
    let with = |program: &str, args: &[&str]| -> Result<std::process::Output> {
        let mut cmd = c.dev(target_dir_bin("mirrord"));
        cmd.args(["exec", "-t", &target, "--", program])
            .args(args)
            .env("MIRRORD_RUNTIME_DIR", &run_dir);
        output_within(&mut cmd, t)
    };
    let curl = with("curl", &["-sS", url])?;
    show(&format!("mirrord exec -t {target} -- curl {url}"), &curl);
    let whoami = with(
        "curl",
        &[
            "-sS",
            "http://payment-service.payments.svc.cluster.local:8080/whoami",
        ],
    )?;
    show(
        "mirrord exec ... -- curl http://payment-service.payments.svc.cluster.local:8080/whoami",
        &whoami,
    );
    let py = with(
        "/usr/bin/python3",
        &["-c", "import socket; print('payment-service resolves to', socket.gethostbyname('payment-service'))"],
    )?;
    show("mirrord exec ... -- python3 (socket.gethostbyname)", &py);

    if without.status.success() || !curl.status.success() || !py.status.success() {
        bail!("the demo did not behave as expected (see above)");
    }
    println!("The program reached payment-service only with mirrord: the connection was made from the pod.");
    Ok(())
}
