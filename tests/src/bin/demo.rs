//! The README demo: starts the simulated Kubernetes cluster (its API server and pods are network
//! namespaces) and shows a program on the developer's machine, which has nothing but a
//! kubeconfig, reaching a cluster service by name through `deployment/payment-api`, then a local
//! server stealing that deployment's filtered requests.

use anyhow::{bail, Context, Result};
use mirrord_tests::k8s::{SimCluster, SimOptions};
use mirrord_tests::{no_proxy, output_within, target_dir_bin};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const TARGET: &str = "deployment/payment-api";

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

fn mirrord(sim: &SimCluster, args: &[&str]) -> Command {
    let mut cmd = sim.dev_cmd(target_dir_bin("mirrord"));
    cmd.args(args)
        .env("KUBECONFIG", sim.kubeconfig())
        .env("MIRRORD_RUNTIME_DIR", sim.workdir().join("run"))
        .env_remove("MIRRORD_TARGET_NAMESPACE");
    no_proxy(&mut cmd);
    cmd
}

/// The pod the (only) agent Job serves: the one whose container id it was given.
fn targeted_pod(sim: &SimCluster) -> Result<String> {
    let job = sim
        .jobs("payments")
        .into_iter()
        .find(|j| {
            j["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("mirrord-agent-"))
        })
        .context("no agent Job")?;
    let args = job["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    let args = args.as_array().context("the agent Job has no args")?;
    let id = args
        .iter()
        .position(|a| a == "--container-id")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.as_str())
        .context("the agent Job has no --container-id")?;
    sim.pods("payments")
        .into_iter()
        .find(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["containerID"] == id))
        })
        .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .context("no pod has the agent's container id")
}

fn run() -> Result<()> {
    println!("Starting the simulated Kubernetes cluster (API server + network namespaces)...");
    let sim = SimCluster::start(SimOptions {
        agent_bin: Some(target_dir_bin("mirrord-agent")),
        ..SimOptions::default()
    })?;
    println!(
        "  kubeconfig {}; the developer's machine is network namespace {} (loopback only: the \
         API server, nothing else)\n",
        sim.kubeconfig().display(),
        sim.ns_dev()
    );
    let t = Duration::from_secs(120);
    let url = "http://payment-service:8080/";

    let mut plain = sim.dev_cmd("curl");
    no_proxy(&mut plain).args(["-sS", "--max-time", "5", url]);
    let without = output_within(&mut plain, t)?;
    show(&format!("curl {url}  (without mirrord)"), &without);

    let curl = output_within(
        &mut mirrord(
            &sim,
            &[
                "exec", "-t", TARGET, "-n", "payments", "--", "curl", "-sS", url,
            ],
        ),
        t,
    )?;
    show(
        &format!("mirrord exec -t {TARGET} -n payments -- curl {url}"),
        &curl,
    );
    if without.status.success() || !curl.status.success() {
        bail!("the demo did not behave as expected (see above)");
    }
    println!(
        "The program reached payment-service only with mirrord: an agent Job joined a \
         payment-api pod, and the connection was made from there.\n"
    );

    // Incoming: a local server steals the deployment's port 80 for requests with x-user: alice.
    let config = sim.workdir().join("steal.json");
    std::fs::write(
        &config,
        r#"{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": {"header_filter": "x-user: alice"}}}}}"#,
    )?;
    let server = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("services/local_http.py");
    let config_arg = config.display().to_string();
    let server_arg = server.display().to_string();
    let mut app = mirrord(
        &sim,
        &[
            "exec",
            "-t",
            TARGET,
            "-n",
            "payments",
            "-f",
            &config_arg,
            "--",
            "/usr/bin/python3",
            "-B",
            &server_arg,
            "80",
            "--name",
            "developer-laptop",
        ],
    );
    use std::os::unix::process::CommandExt;
    let app_log = sim.workdir().join("local-server.log");
    let mut app = mirrord_tests::as_from_a_terminal(&mut app)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its stderr (mirrord's messages, Python's KeyboardInterrupt at the end) goes to a log.
        .stderr(std::fs::File::create(&app_log)?)
        .spawn()
        .context("starting mirrord exec")?;
    let stdout = app.stdout.take().context("piped stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let listening = lines.find(|l| l.as_ref().is_ok_and(|l| l.contains("listening")));
    if listening.is_none() {
        let _ = app.kill();
        bail!(
            "the local server never listened: {}",
            std::fs::read_to_string(&app_log).unwrap_or_default()
        );
    }
    // Keep draining its output.
    std::thread::spawn(move || for _ in lines {});
    let pod = targeted_pod(&sim)?;
    let ip = sim
        .pod_ip("payments", &pod)
        .context("the pod has no address")?;
    println!(
        "A local server now listens on port 80 under mirrord, stealing {TARGET}'s requests with \
         x-user: alice (its pod {pod}, {ip})."
    );
    let ask = |user: &str| -> Result<std::process::Output> {
        let mut cmd = sim.client_cmd("curl");
        no_proxy(&mut cmd).args(["-sS", "--max-time", "10", "-H", &format!("x-user: {user}")]);
        cmd.arg(format!("http://{ip}/checkout"));
        output_within(&mut cmd, t)
    };
    let alice = ask("alice")?;
    show("client -> payment-api pod :80 with x-user: alice", &alice);
    let bob = ask("bob")?;
    show("client -> payment-api pod :80 with x-user: bob", &bob);
    // Ctrl-C, as in a terminal (to the whole group): the server stops, the session ends and
    // deletes its agent Job.
    // SAFETY: a signal to the process group of the child we started and have not reaped.
    unsafe { libc::kill(-(app.id() as i32), libc::SIGINT) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            // SAFETY: as above; the group is still ours (the child is not reaped).
            unsafe { libc::kill(-(app.id() as i32), libc::SIGKILL) };
            let _ = app.wait();
            bail!(
                "mirrord exec did not end within 30 s of Ctrl-C: {}",
                std::fs::read_to_string(&app_log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let stolen = String::from_utf8_lossy(&alice.stdout).contains("developer-laptop");
    let kept = String::from_utf8_lossy(&bob.stdout).starts_with(&format!("{pod}:"));
    if !stolen || !kept {
        bail!("the steal did not behave as expected (see above)");
    }
    println!("alice's request was served on the developer's machine; bob's by the pod itself.");
    Ok(())
}
