//! Runs a simulated Kubernetes cluster (API server + network-namespace cluster) until SIGTERM
//! or SIGINT, then removes it. Used by `./scripts/cluster up`.
//!
//! ```text
//! k8s-sim --agent-bin target/debug/mirrord-agent [--image IMAGE=BINARY]... [--state-dir DIR] [--json]
//! k8s-sim --sweep     # removes what killed simulators and test runs left behind
//! ```
//! Once ready it prints what to use (kubeconfig, developer namespace, targets; `--json`: one
//! JSON object) and, with `--state-dir`, writes `state.json` and a copy of the kubeconfig there
//! (removed again on exit).
//!
//! Faults, by hand: on SIGUSR1 it reads `<state-dir>/faults.json` and makes the cluster behave
//! that way (everything not named is switched off):
//! `{"forbid": [["create", "jobs", "payments"]], "fail_image_pull": ["IMAGE"],
//!   "delete_job_pods": true, "latency_ms": 200, "drop_port_forwards": true,
//!   "api_down_ms": 10000}`.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use mirrord_tests::k8s::{ImageRule, SimCluster, SimOptions};
use serde_json::{json, Value};

fn usage() -> ! {
    eprintln!(
        "usage: k8s-sim [--agent-bin PATH] [--image IMAGE=BINARY]... [--state-dir DIR] [--json]\n       k8s-sim --sweep"
    );
    std::process::exit(2);
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut opts = SimOptions::default();
    let mut state_dir: Option<PathBuf> = None;
    let mut as_json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--agent-bin" => opts.agent_bin = Some(args.next().unwrap_or_else(|| usage()).into()),
            "--image" => {
                let rule = args.next().unwrap_or_else(|| usage());
                let Some((image, binary)) = rule.split_once('=') else {
                    bail!("--image wants IMAGE=BINARY, got {rule:?}");
                };
                opts.images.push(ImageRule::new(image, binary));
            }
            "--state-dir" => state_dir = Some(args.next().unwrap_or_else(|| usage()).into()),
            "--json" => as_json = true,
            "--sweep" => {
                mirrord_tests::k8s::sweep_stale();
                return Ok(());
            }
            "-h" | "--help" => usage(),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if let Some(bin) = &opts.agent_bin {
        if !bin.is_file() {
            bail!("--agent-bin {}: no such file", bin.display());
        }
    }

    // SIGTERM/SIGINT/SIGHUP are taken with sigwait below; blocked before any thread exists so
    // that every thread inherits the mask (children get an empty mask from std::process).
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain libc signal-set calls on a local set.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }

    let sim = SimCluster::start(opts).context("starting the simulated cluster")?;
    let mut kubeconfig = sim.kubeconfig().to_path_buf();
    if let Some(dir) = &state_dir {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let copy = dir.join("kubeconfig");
        fs::copy(sim.kubeconfig(), &copy).context("copying the kubeconfig")?;
        kubeconfig = copy;
    }
    let targets = targets(&sim);
    let info = json!({
        "pid": std::process::id(),
        "id": sim.id(),
        "kubeconfig": kubeconfig,
        "api": sim.server_url(),
        "dev_namespace": sim.ns_dev(),
        "client_namespace": sim.ns_client(),
        "namespace": SimCluster::NAMESPACE,
        "targets": targets,
    });
    if let Some(dir) = &state_dir {
        fs::write(dir.join("state.json"), serde_json::to_string_pretty(&info)?)
            .context("writing state.json")?;
    }
    if as_json {
        println!("{info}");
    } else {
        println!("simulated cluster {} is up", sim.id());
        println!("kubeconfig:          {}", kubeconfig.display());
        println!(
            "API server:          {} (inside the developer namespace)",
            sim.server_url()
        );
        println!(
            "developer namespace: {}   (run programs with: ip netns exec {} PROGRAM ...)",
            sim.ns_dev(),
            sim.ns_dev()
        );
        println!(
            "client namespace:    {} (sends traffic to pods)",
            sim.ns_client()
        );
        println!("targets in namespace {}:", SimCluster::NAMESPACE);
        for t in &targets {
            println!("  {}", t["path"].as_str().unwrap_or_default());
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let sig = loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait on the set blocked above.
        unsafe { libc::sigwait(&set, &mut sig) };
        if sig != libc::SIGUSR1 {
            break sig;
        }
        match &state_dir {
            Some(dir) => match apply_faults(&sim, &dir.join("faults.json")) {
                Ok(()) => eprintln!("k8s-sim: faults applied"),
                Err(e) => eprintln!("k8s-sim: faults not applied: {e:#}"),
            },
            None => eprintln!("k8s-sim: SIGUSR1 needs --state-dir (faults.json)"),
        }
    };
    eprintln!("k8s-sim: signal {sig}, removing the cluster");
    drop(sim);
    if let Some(dir) = &state_dir {
        let _ = fs::remove_file(dir.join("state.json"));
        let _ = fs::remove_file(dir.join("kubeconfig"));
    }
    Ok(())
}

/// Replaces the cluster's faults with those of the JSON file (see the module docs).
fn apply_faults(sim: &SimCluster, path: &std::path::Path) -> Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: Value = serde_json::from_str(&text).context("faults.json is not JSON")?;
    let known = [
        "forbid",
        "fail_image_pull",
        "delete_job_pods",
        "latency_ms",
        "drop_port_forwards",
        "api_down_ms",
    ];
    if let Some(unknown) = f
        .as_object()
        .context("faults.json must be an object")?
        .keys()
        .find(|k| !known.contains(&k.as_str()))
    {
        bail!("unknown fault {unknown:?} (known: {known:?})");
    }
    sim.clear_faults();
    for rule in f["forbid"].as_array().into_iter().flatten() {
        match rule
            .as_array()
            .map(|r| r.iter().map(Value::as_str).collect::<Vec<_>>())
        {
            Some(r) if r.len() == 3 && r.iter().all(Option::is_some) => {
                let r: Vec<&str> = r.into_iter().flatten().collect();
                sim.forbid(r[0], r[1], r[2]);
            }
            _ => bail!("forbid wants [verb, resource, namespace] triples, got {rule}"),
        }
    }
    for image in f["fail_image_pull"].as_array().into_iter().flatten() {
        sim.fail_image_pull(
            image
                .as_str()
                .context("fail_image_pull wants image names")?,
        );
    }
    sim.delete_job_pods(f["delete_job_pods"].as_bool().unwrap_or(false));
    sim.set_api_latency(std::time::Duration::from_millis(
        f["latency_ms"].as_u64().unwrap_or(0),
    ));
    if f["drop_port_forwards"].as_bool().unwrap_or(false) {
        sim.drop_port_forwards();
    }
    if let Some(ms) = f["api_down_ms"].as_u64() {
        sim.take_api_down(std::time::Duration::from_millis(ms));
    }
    Ok(())
}

/// The fixtures as mirrord target paths, with the pod each resolves to when obvious.
fn targets(sim: &SimCluster) -> Vec<Value> {
    let ns = SimCluster::NAMESPACE;
    let mut out = Vec::new();
    for (plural, kind) in [
        ("pods", "pod"),
        ("deployments", "deployment"),
        ("statefulsets", "statefulset"),
        ("replicasets", "replicaset"),
        ("jobs", "job"),
        ("cronjobs", "cronjob"),
        ("rollouts", "rollout"),
        ("services", "service"),
    ] {
        for o in sim.list(plural, ns) {
            let Some(name) = o["metadata"]["name"].as_str() else {
                continue;
            };
            let mut t = json!({"path": format!("{kind}/{name}"), "kind": kind, "name": name});
            if plural == "pods" {
                t["ip"] = o["status"]["podIP"].clone();
                t["ready"] = json!(o["status"]["conditions"].as_array().is_some_and(|c| c
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")));
            }
            out.push(t);
        }
    }
    out
}
