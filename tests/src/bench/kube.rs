//! The Kubernetes section of the benchmark: the port-forward transport, on the simulated
//! Kubernetes API (`crate::k8s::SimCluster`, a cluster of its own, started after the other
//! sections' cluster is gone).
//!
//! Variants, each a fresh process of `bench_client` per measurement:
//! - **direct**: the client in the network namespace of the target pod (a `payment-api` pod).
//! - **mirrord**: the client in the developer namespace (loopback only, the API on its
//!   127.0.0.1) under `mirrord exec -t deployment/payment-api -n payments` with the sim's
//!   kubeconfig and nothing else: the agent runs as a Job and every flow reaches it through
//!   `pods/portforward` (WebSocket, TLS, relayed by the API server).
//! - **mirrord pid/**: the same client under `mirrord exec -t pid/<the pod's process>`: the
//!   agent spawned on this machine, no API in the path (the transport of the other sections).
//!
//! - **reconnect** (mirrord only): the reconnect probe (`services/reconnect_probe.py`) asks
//!   payment-service every 10 ms under `mirrord exec`; the API server goes down for
//!   [`OUTAGE`] (every port-forward cut, new connections refused); the figure is the time from
//!   the outage's end to the first answer after it.
//!
//! Nothing connects from the root namespace to a cluster address: the direct client runs in
//! the pod, the others in dev, which reaches nothing but the API.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::report::{Better, Figure, Goal};
use super::run::{
    agent_rules_left, check_interrupted, client_errors, f64_of, no_proxy, poll, rotated, run_json,
    Bins, Figures, Params, Proc,
};
use crate::k8s::{SimCluster, SimOptions};
use crate::output_within;

/// The section's title in the tables.
pub const SECTION: &str = "Kubernetes (port-forward transport)";
/// The Kubernetes namespace and the target of the mirrord variant.
const NS: &str = "payments";
const TARGET: &str = "deployment/payment-api";
/// payment-service by its short name (the pod's search list / the agent's resolver).
const SVC: &str = "payment-service:8080";
/// The download of the head-of-line figure: the 100 MiB blob twice on one connection.
const BULK_GETS: usize = 2;
const BULK_MIB: usize = 100;
/// The goal of issue 11 (point 4): keep-alive p99 during the download ≤ 3× alone.
const HOL_GOAL: f64 = 3.0;
/// Requests (and warm-up) of the paced new-connection figure: 2 s per variant and run.
const PACED_N: usize = 100;
const PACED_WARMUP: usize = 10;
/// How long the API server is down in the reconnect measurement.
const OUTAGE: std::time::Duration = std::time::Duration::from_secs(2);
/// The system Python (the `python3` on PATH may be a pyenv shim).
const PY: &str = "/usr/bin/python3";
/// The port the `payment-api` pods serve (`pod_http.py`), which the steal figures take.
const POD_PORT: u16 = 80;

/// Variants of the steal figures: the pod serving itself, then the same program in dev under
/// a stealing session through the port-forward transport (`pod/NAME`) or a local agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Steal {
    PodLocal,
    PortForward,
    Pid,
}

impl Steal {
    fn name(self) -> &'static str {
        match self {
            Steal::PodLocal => "pod-local",
            Steal::PortForward => "mirrord steal",
            Steal::Pid => "mirrord steal pid/",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Direct,
    Mirrord,
    MirrordPid,
}

const VARIANTS: [Variant; 3] = [Variant::Direct, Variant::Mirrord, Variant::MirrordPid];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Mirrord => "mirrord",
            Variant::MirrordPid => "mirrord pid/",
        }
    }
}

/// The figures of the section (appended to `f`).
pub fn figures(p: &Params, f: &mut Vec<Figure>) {
    let s = SECTION;
    let variants = "direct: the client in the target pod's namespace; mirrord: in dev under \
                    `mirrord exec -t deployment/payment-api -n payments` (agent Job, \
                    port-forward); mirrord pid/: in dev under `mirrord exec -t pid/<pod process>` \
                    (agent spawned locally, no API in the path)";
    let steal = "from a `payment-service` pod to the target pod's port 80. pod-local: the \
                 pod's own server (`pod_http.py`) answers; mirrord steal: the same program in \
                 dev under `mirrord exec -t pod/<the pod> -n payments` with `incoming: steal` \
                 (agent Job, every connection a port-forward stream); mirrord steal pid/: the \
                 same under `-t pid/<pod process>` (local agent)";
    f.push(
        Figure::new(
            "k8s.steal.ka",
            s,
            "stolen keep-alive p50",
            "µs",
            Better::Lower,
        )
        .baseline("pod-local")
        .note(&format!(
            "{} sequential `GET /` (after {} warm-up) on one keep-alive connection {steal}.",
            p.req_n, p.req_warmup
        )),
    );
    f.push(
        Figure::new(
            "k8s.steal.nc",
            s,
            "stolen new-connection p50",
            "µs",
            Better::Lower,
        )
        .baseline("pod-local")
        .note(&format!(
            "{} requests (after {} warm-up), each on a new connection, as above.",
            p.newconn_n, p.newconn_warmup
        )),
    );
    f.push(
        Figure::new(
            "k8s.bulk1",
            s,
            "bulk download, 1 stream",
            "MiB/s",
            Better::Higher,
        )
        .baseline("direct")
        .note(&format!(
            "One connection GETs the {BULK_MIB} MiB blob of payment-service (`/bytes`, \
             sendfile) by its short name: MiB over the wall time. {variants}."
        )),
    );
    f.push(
        Figure::new(
            "k8s.ka.p50",
            s,
            "keep-alive request p50",
            "µs",
            Better::Lower,
        )
        .baseline("direct")
        .note(&format!(
            "{} sequential `GET /` after {} warm-up on one keep-alive connection.",
            p.req_n, p.req_warmup
        )),
    );
    f.push(
        Figure::new(
            "k8s.ka.p99",
            s,
            "keep-alive request p99",
            "µs",
            Better::Lower,
        )
        .baseline("direct"),
    );
    f.push(
        Figure::new(
            "k8s.nc.p50",
            s,
            "new-connection request p50",
            "µs",
            Better::Lower,
        )
        .baseline("direct")
        .note(&format!(
            "{} sequential requests (after {} warm-up), each on a new connection (through \
             mirrord: a new port-forward stream each).",
            p.newconn_n, p.newconn_warmup
        )),
    );
    f.push(
        Figure::new(
            "k8s.ncp.p50",
            s,
            "new-connection request p50, one every 20 ms",
            "µs",
            Better::Lower,
        )
        .baseline("direct")
        .note(&format!(
            "{PACED_N} requests (after {PACED_WARMUP} warm-up), each on a new connection opened              20 ms after the last one ended: a program that connects now and then, where the              session's spare port-forward streams (opened ahead of need, refilled after each              take) are ready; back to back (the row above) the pool runs dry and every              connection waits for a new port-forward's TLS handshake."
        )),
    );
    f.push(
        Figure::new(
            "k8s.hol.alone",
            s,
            "keep-alive p99, alone",
            "µs",
            Better::Lower,
        )
        .baseline("direct")
        .note(&format!(
            "`bench_client loaded`: one process (under mirrord: one session) first times {} \
             keep-alive `GET /` alone (after {} warm-up), then keeps sending them on the same \
             connection while a second connection downloads {} MiB ({BULK_GETS} × `/bytes` \
             back to back); the requests that finish while the download is in flight are the \
             \"during\" samples.",
            p.req_n,
            p.req_warmup,
            BULK_GETS * BULK_MIB
        )),
    );
    f.push(
        Figure::new(
            "k8s.hol.during",
            s,
            &format!(
                "keep-alive p99, during a {} MiB download",
                BULK_GETS * BULK_MIB
            ),
            "µs",
            Better::Lower,
        )
        .baseline("direct"),
    );
    f.push(
        Figure::new(
            "k8s.hol.ratio",
            s,
            "keep-alive p99 during ÷ alone",
            "×",
            Better::Lower,
        )
        .goal("mirrord", Goal::AtMost(HOL_GOAL))
        .note(&format!(
            "Per run and variant: the p99 during the download divided by the p99 alone, both \
             from the same process (issue 11's goal: ≤ {HOL_GOAL}× through the port-forward \
             transport). No baseline: each variant's own ratio, side by side."
        )),
    );
    f.push(
        Figure::new(
            "k8s.hol.samples",
            s,
            "requests during the download",
            "requests",
            Better::Higher,
        )
        .note(
            "How many keep-alive requests finished while the download was in flight (the \
             sample behind the \"during\" p99).",
        ),
    );
    f.push(
        Figure::new(
            "k8s.hol.mibs",
            s,
            "download throughput beside the requests",
            "MiB/s",
            Better::Higher,
        )
        .baseline("direct"),
    );
    f.push(
        Figure::new(
            "k8s.reconnect",
            s,
            "reconnect: outage end → first request served",
            "ms",
            Better::Lower,
        )
        .note(&format!(
            "mirrord only: `services/reconnect_probe.py` asks payment-service (a new \
             connection and lookup each time) every 10 ms under `mirrord exec -t {TARGET}`; \
             the simulated API server goes down for {} s (every port-forward cut, new \
             connections closed on accept), so the session loses its agent connection and \
             reconnects with backoff. The time from the end of the outage (CLOCK_MONOTONIC) to \
             the probe's first answer after it (its CLOCK_MONOTONIC): the reconnect backoff's \
             wait, a new port-forward, the resume and the re-subscribes, then one request.",
            OUTAGE.as_secs()
        )),
    );
}

/// Seconds of CLOCK_MONOTONIC, the clock Python's `time.monotonic()` reads.
fn monotonic_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The simulated Kubernetes cluster and what the section needs on it.
pub struct KubeBench {
    sim: SimCluster,
    bins: Bins,
    p: Params,
    /// The pod the direct client runs in (a `payment-api` pod).
    pod: String,
    /// A process of that pod (the `pid/` target).
    pod_pid: u32,
    /// The pod's address (the steal figures' destination).
    pod_ip: std::net::Ipv4Addr,
    /// A `payment-service` pod: the steal figures' client runs there.
    client_pod: String,
}

/// Pids of the processes in a network namespace (`ip netns pids`).
fn netns_pids(netns: &str) -> Result<Vec<u32>> {
    let out = output_within(
        Command::new("ip").args(["netns", "pids", netns]),
        std::time::Duration::from_secs(10),
    )?;
    if !out.status.success() {
        bail!("ip netns pids {netns}: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect())
}

impl KubeBench {
    /// Starts the simulated cluster (agent image → `agent_bin`), creates the bulk blob and
    /// checks that every variant answers once.
    pub fn new(bins: Bins, agent_bin: PathBuf, p: Params) -> Result<KubeBench> {
        let sim = SimCluster::start(SimOptions {
            agent_bin: Some(agent_bin),
            ..SimOptions::default()
        })?;
        fs::create_dir_all(sim.workdir().join("run"))?;
        // Created before anything is timed (else the first GET would generate it).
        let bulk = sim.workdir().join("bulk.bin");
        let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("services");
        let out = output_within(
            Command::new(PY)
                .arg("-B")
                .arg(services.join("bulk.py"))
                .arg(&bulk),
            std::time::Duration::from_secs(120),
        )?;
        if !out.status.success() {
            bail!("bulk.py {}: {}", bulk.display(), out.status);
        }
        let mut pods = sim.pods_of(NS, "app=payment-api");
        pods.sort();
        let pod = pods
            .first()
            .context("no payment-api pod in the simulated cluster")?
            .clone();
        let netns = sim
            .pod_netns(NS, &pod)
            .with_context(|| format!("pod {pod} has no network namespace"))?;
        let pod_pid = *netns_pids(&netns)?
            .first()
            .with_context(|| format!("no process in pod {pod}'s namespace"))?;
        let pod_ip = sim
            .pod_ip(NS, &pod)
            .with_context(|| format!("pod {pod} has no address"))?;
        let client_pod = sim
            .pods_of(NS, "app=payment-service")
            .first()
            .context("no payment-service pod in the simulated cluster")?
            .clone();
        let kb = KubeBench {
            sim,
            bins,
            p,
            pod,
            pod_pid,
            pod_ip,
            client_pod,
        };
        for v in VARIANTS {
            let r = run_json(kb.client(v, &["http", SVC, "/", "1", "0", "keepalive"])?)
                .with_context(|| format!("checking the {} variant", v.name()))?;
            if r["n"] != 1 {
                bail!("the {} variant does not answer: {r}", v.name());
            }
        }
        Ok(kb)
    }

    /// What the section ran on (for `--hold-cluster`).
    pub fn describe(&self) -> String {
        format!(
            "simulated Kubernetes API {}: kubeconfig {}, dev ns {}, direct pod {NS}/{} (pid {})",
            self.sim.id(),
            self.sim.kubeconfig().display(),
            self.sim.ns_dev(),
            self.pod,
            self.pod_pid
        )
    }

    /// The client with `args`, run the way variant `v` runs it.
    fn client(&self, v: Variant, args: &[&str]) -> Result<Command> {
        let mut cmd = match v {
            Variant::Direct => {
                let mut cmd = self.sim.pod_cmd(NS, &self.pod, &self.bins.client)?;
                cmd.args(args);
                cmd
            }
            Variant::Mirrord | Variant::MirrordPid => {
                let target = match v {
                    Variant::Mirrord => TARGET.to_owned(),
                    _ => format!("pid/{}", self.pod_pid),
                };
                let mut cmd = self.mirrord_exec(&target);
                cmd.arg("--").arg(&self.bins.client).args(args);
                cmd
            }
        };
        no_proxy(&mut cmd);
        Ok(cmd)
    }

    /// `mirrord exec -t target` in dev, up to the program (a cluster target with the sim's
    /// kubeconfig and `-n payments`, nothing from the caller's environment choosing another).
    fn mirrord_exec(&self, target: &str) -> Command {
        let mut cmd = self.sim.dev_cmd(&self.bins.mirrord);
        cmd.args(["exec", "-t", target])
            .env("MIRRORD_RUNTIME_DIR", self.sim.workdir().join("run"));
        if !target.starts_with("pid/") {
            cmd.args(["-n", NS])
                .env("KUBECONFIG", self.sim.kubeconfig());
        }
        for var in [
            "MIRRORD_TARGET_NAMESPACE",
            "MIRRORD_KUBECONFIG",
            "MIRRORD_KUBE_CONTEXT",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// One run of the section.
    pub fn run(&mut self, run: usize, figs: &mut Figures) -> Result<()> {
        let order = rotated(&VARIANTS, run);
        let p = self.p.clone();
        for &v in &order {
            check_interrupted()?;
            let r = run_json(self.client(v, &["bulk", SVC, "/bytes", "1"])?);
            match r {
                Ok(r) if r["bytes"].as_u64() == Some(crate::Cluster::BULK_SIZE) => {
                    figs.put("k8s.bulk1", v.name(), run, f64_of(&r, "mib_s")?)
                }
                Ok(r) => figs.fail("k8s.bulk1", v.name(), run, &format!("incomplete: {r}")),
                Err(e) => figs.fail("k8s.bulk1", v.name(), run, &format!("{e:#}")),
            }
        }
        for (mode, n, w, key) in [
            ("keepalive", p.req_n, p.req_warmup, "ka"),
            ("newconn", p.newconn_n, p.newconn_warmup, "nc"),
            ("newconn-paced", PACED_N, PACED_WARMUP, "ncp"),
        ] {
            for &v in &order {
                check_interrupted()?;
                let r = run_json(
                    self.client(v, &["http", SVC, "/", &n.to_string(), &w.to_string(), mode])?,
                );
                latency(figs, key, v.name(), run, r)?;
            }
        }
        for &v in &order {
            check_interrupted()?;
            let r = run_json(self.client(
                v,
                &[
                    "loaded",
                    SVC,
                    "/bytes",
                    &BULK_GETS.to_string(),
                    &p.req_n.to_string(),
                    &p.req_warmup.to_string(),
                ],
            )?);
            head_of_line(figs, v.name(), run, r)?;
        }
        for v in rotated(&[Steal::PodLocal, Steal::PortForward, Steal::Pid], run) {
            check_interrupted()?;
            self.steal(v, run, figs)?;
        }
        check_interrupted()?;
        match self.reconnect_ms() {
            Ok(ms) => figs.put("k8s.reconnect", "mirrord", run, ms),
            Err(e) => figs.fail("k8s.reconnect", "mirrord", run, &format!("{e:#}")),
        }
        Ok(())
    }

    /// The steal figures of variant `v` (see [`figures`]): a stealing session runs only while
    /// they are measured, and its rules are gone before the next variant.
    fn steal(&self, v: Steal, run: usize, figs: &mut Figures) -> Result<()> {
        let session = match v {
            Steal::PodLocal => None,
            Steal::PortForward | Steal::Pid => match self.start_steal(v, run) {
                Ok(s) => Some(s),
                Err(e) => {
                    for id in ["k8s.steal.ka", "k8s.steal.nc"] {
                        figs.fail(id, v.name(), run, &format!("{e:#}"));
                    }
                    return Ok(());
                }
            },
        };
        let to = format!("{}:{POD_PORT}", self.pod_ip);
        let p = &self.p;
        for (id, mode, n, w) in [
            ("k8s.steal.ka", "keepalive", p.req_n, p.req_warmup),
            ("k8s.steal.nc", "newconn", p.newconn_n, p.newconn_warmup),
        ] {
            let mut cmd = self.sim.pod_cmd(NS, &self.client_pod, &self.bins.client)?;
            cmd.args(["http", &to, "/", &n.to_string(), &w.to_string(), mode]);
            no_proxy(&mut cmd);
            match run_json(cmd) {
                Ok(r) => {
                    figs.put(id, v.name(), run, f64_of(&r, "p50_us")?);
                    if let Some(e) = client_errors(&r) {
                        figs.get(id).fail(v.name(), run, &e);
                    }
                }
                Err(e) => figs.fail(id, v.name(), run, &format!("{e:#}")),
            }
        }
        if let Some(mut s) = session {
            s.signal_group(libc::SIGINT);
            let _ = s.wait_exit(std::time::Duration::from_secs(20));
            self.wait_rules_gone()?;
        }
        Ok(())
    }

    /// `pod_http.py` in dev under a stealing session of variant `v`, once it listens.
    fn start_steal(&self, v: Steal, run: usize) -> Result<Proc> {
        let config = self.sim.workdir().join("steal.json");
        fs::write(&config, r#"{"feature":{"network":{"incoming":"steal"}}}"#)?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("services")
            .join("pod_http.py");
        let log = self
            .sim
            .workdir()
            .join(format!("steal-{run}-{}.log", v as u8));
        let target = match v {
            Steal::PortForward => format!("pod/{}", self.pod),
            _ => format!("pid/{}", self.pod_pid),
        };
        let mut cmd = self.mirrord_exec(&target);
        cmd.arg("-f")
            .arg(&config)
            .arg("--")
            .arg(PY)
            .arg("-B")
            .arg(&script)
            .args(["--port", &POD_PORT.to_string(), "--log"])
            .arg(&log);
        no_proxy(&mut cmd);
        let mut s = Proc::spawn(cmd)?;
        s.wait_out("ready", std::time::Duration::from_secs(60))
            .with_context(|| format!("starting the {} session", v.name()))?;
        Ok(s)
    }

    /// Waits until no agent's redirect rule is left in the target pod.
    fn wait_rules_gone(&self) -> Result<()> {
        // Checked once, so the listing below cannot fail for want of the pod's namespace.
        self.sim.pod_cmd(NS, &self.pod, "true")?;
        poll(
            std::time::Duration::from_secs(30),
            "the stealing agent's rules to go",
            || {
                !agent_rules_left(|program| {
                    self.sim
                        .pod_cmd(NS, &self.pod, program)
                        // Not reached (checked above); a command that fails reads as rules left.
                        .unwrap_or_else(|_| Command::new("false"))
                })
            },
        )
    }

    /// One reconnect measurement (see the module docs): milliseconds from the end of an API
    /// outage to the first request served after it.
    fn reconnect_ms(&self) -> Result<f64> {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let probe = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("services")
            .join("reconnect_probe.py");
        let mut cmd = self.sim.dev_cmd(&self.bins.mirrord);
        cmd.args(["exec", "-t", TARGET, "-n", NS, "--", PY, "-B"])
            .arg(&probe)
            // No port of its own; 60 s at most (it is killed as soon as it answered).
            .args(["0", &format!("http://{SVC}/"), "60", "0.01"])
            .env("KUBECONFIG", self.sim.kubeconfig())
            .env("MIRRORD_RUNTIME_DIR", self.sim.workdir().join("run"))
            .env_remove("MIRRORD_TARGET_NAMESPACE")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .process_group(0);
        no_proxy(&mut cmd);
        let mut child = cmd.spawn().context("starting the reconnect probe")?;
        // Killed (its whole group: mirrord and the probe) however this ends.
        struct Group(std::process::Child);
        impl Drop for Group {
            fn drop(&mut self) {
                // SAFETY: the process group this function created.
                unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
                let _ = self.0.wait();
            }
        }
        let stdout = child.stdout.take().context("piped stdout")?;
        let _group = Group(child);
        let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line_tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let next_ok = |after: f64| -> Result<f64> {
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let line = line_rx
                    .recv_timeout(left)
                    .context("the probe said nothing more in time")?;
                let mut words = line.split_whitespace();
                if words.next() == Some("ok") {
                    let t: f64 = words.nth(1).context("ok N T")?.parse()?;
                    if t > after {
                        return Ok(t);
                    }
                }
            }
        };
        next_ok(0.0).context("the probe never got an answer before the outage")?;
        let outage_end = monotonic_now() + OUTAGE.as_secs_f64();
        self.sim.take_api_down(OUTAGE);
        let served = next_ok(outage_end).context("no answer after the outage")?;
        Ok((served - outage_end) * 1000.0)
    }
}

/// Records `k8s.{key}.p50` (and `.p99` for keep-alive) of a latency summary.
fn latency(
    figs: &mut Figures,
    key: &str,
    variant: &str,
    run: usize,
    r: Result<Value>,
) -> Result<()> {
    let p50 = format!("k8s.{key}.p50");
    let p99 = (key == "ka").then(|| format!("k8s.{key}.p99"));
    match r {
        Ok(r) => {
            figs.put(&p50, variant, run, f64_of(&r, "p50_us")?);
            if let Some(p99) = &p99 {
                figs.put(p99, variant, run, f64_of(&r, "p99_us")?);
            }
            if let Some(e) = client_errors(&r) {
                figs.get(&p50).fail(variant, run, &e);
            }
        }
        Err(e) => {
            figs.fail(&p50, variant, run, &format!("{e:#}"));
            if let Some(p99) = &p99 {
                figs.fail(p99, variant, run, &format!("{e:#}"));
            }
        }
    }
    Ok(())
}

/// The figures of one `bench_client loaded` summary (see [`head_of_line_values`]).
fn head_of_line(figs: &mut Figures, variant: &str, run: usize, r: Result<Value>) -> Result<()> {
    let ids = [
        "k8s.hol.alone",
        "k8s.hol.during",
        "k8s.hol.ratio",
        "k8s.hol.samples",
        "k8s.hol.mibs",
    ];
    match r.and_then(|r| head_of_line_values(&r)) {
        Ok(values) => {
            for (id, v) in ids.iter().zip(values) {
                figs.put(id, variant, run, v);
            }
        }
        Err(e) => {
            for id in ids {
                figs.fail(id, variant, run, &format!("{e:#}"));
            }
        }
    }
    Ok(())
}

/// p99 alone, p99 during, their ratio, the number of "during" samples and the download's
/// MiB/s, from a `bench_client loaded` summary; an error when the download was incomplete,
/// a request failed, or there is no "during" sample to take a p99 of.
pub fn head_of_line_values(r: &Value) -> Result<[f64; 5]> {
    let want = (BULK_GETS * BULK_MIB * 1024 * 1024) as u64;
    if r["bulk_bytes"].as_u64() != Some(want) {
        bail!(
            "download incomplete ({} of {want} bytes): {r}",
            r["bulk_bytes"]
        );
    }
    if let Some(e) = client_errors(r) {
        bail!("{e}");
    }
    let n_during = f64_of(r, "n_during")?;
    if n_during < 1.0 {
        bail!("no request finished during the download: {r}");
    }
    let alone = f64_of(r, "p99_alone_us")?;
    let during = f64_of(r, "p99_during_us")?;
    Ok([
        alone,
        during,
        during / alone,
        n_during,
        f64_of(r, "bulk_mib_s")?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{markdown_tables, Status};
    use serde_json::json;

    fn summary(bytes: u64, errors: u64, n_during: u64) -> Value {
        json!({
            "n_alone": 2000, "n_during": n_during,
            "p99_alone_us": 200.0, "p99_during_us": 500.0,
            "bulk_bytes": bytes, "bulk_mib_s": 150.0,
            "errors": errors, "first_error": null,
        })
    }

    #[test]
    fn head_of_line_values_are_checked() {
        let full = (BULK_GETS * BULK_MIB * 1024 * 1024) as u64;
        let v = head_of_line_values(&summary(full, 0, 900)).unwrap();
        assert_eq!(v, [200.0, 500.0, 2.5, 900.0, 150.0]);
        assert!(head_of_line_values(&summary(full / 2, 0, 900)).is_err());
        assert!(head_of_line_values(&summary(full, 1, 900)).is_err());
        assert!(head_of_line_values(&summary(full, 0, 0)).is_err());
    }

    #[test]
    fn the_ratio_figure_is_judged_on_its_own_values() {
        let p = Params::quick(3);
        let mut f = Vec::new();
        figures(&p, &mut f);
        let mut figs = Figures(f);
        let full = (BULK_GETS * BULK_MIB * 1024 * 1024) as u64;
        for run in 0..3 {
            head_of_line(&mut figs, "direct", run, Ok(summary(full, 0, 100))).unwrap();
            let mut m = summary(full, 0, 400);
            m["p99_during_us"] = json!(200.0 * (3.0 + run as f64));
            head_of_line(&mut figs, "mirrord", run, Ok(m)).unwrap();
        }
        let ratio = figs.get("k8s.hol.ratio").clone();
        // mirrord's ratios 3, 4, 5: median 4 > 3.
        assert_eq!(ratio.summary("mirrord").unwrap().median, 4.0);
        assert_eq!(ratio.judge("mirrord").unwrap().1, Status::Missed);
        assert!(ratio.judge("direct").is_none());
        let md = markdown_tables(&figs.0);
        assert!(
            md.contains("### Kubernetes (port-forward transport)"),
            "{md}"
        );
        assert!(
            md.contains("| mirrord | 4.00 × | 3.00–5.00 | – | ≤ 3.00 × | **missed** |"),
            "{md}"
        );
        // A failed run shows as failed, not as a value.
        head_of_line(&mut figs, "mirrord pid/", 0, Err(anyhow::anyhow!("boom"))).unwrap();
        assert!(figs.get("k8s.hol.ratio").summary("mirrord pid/").is_none());
    }
}
