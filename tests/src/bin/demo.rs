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
    println!("The program reached payment-service only with mirrord: the connection was made from the pod.\n");

    // Incoming: a local server steals the pod's port 80 for requests with `x-user: alice`.
    let config = c.workdir().join("steal.json");
    std::fs::write(
        &config,
        r#"{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": {"header_filter": "x-user: alice"}}}}}"#,
    )?;
    let server = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("services/local_http.py");
    let mut app = c.dev(target_dir_bin("mirrord"));
    app.args(["exec", "-t", &target, "-f"])
        .arg(&config)
        .args(["--", "/usr/bin/python3", "-B"])
        .arg(&server)
        .args(["80", "--name", "developer-laptop"])
        .env("MIRRORD_RUNTIME_DIR", &run_dir);
    let mut app = c.spawn(app)?;
    app.wait_line("listening", t)?;
    println!("A local server now listens on port 80 under mirrord, stealing requests with x-user: alice.");
    let ask = |user: Option<&str>| -> Result<std::process::Output> {
        let mut cmd = c.client("curl");
        cmd.args(["-sS", "--max-time", "10"]);
        if let Some(u) = user {
            cmd.args(["-H", &format!("x-user: {u}")]);
        }
        cmd.arg(format!("http://{}/checkout", Cluster::POD_IP));
        output_within(&mut cmd, t)
    };
    let alice = ask(Some("alice"))?;
    show("client -> pod:80 with x-user: alice", &alice);
    let bob = ask(Some("bob"))?;
    show("client -> pod:80 with x-user: bob", &bob);
    app.kill()?;
    let stolen = String::from_utf8_lossy(&alice.stdout).contains("developer-laptop");
    let kept = String::from_utf8_lossy(&bob.stdout).starts_with("pod:");
    if !stolen || !kept {
        bail!("the steal did not behave as expected (see above)");
    }
    println!("alice's request was served on the developer's machine; bob's by the pod itself.");
    Ok(())
}
