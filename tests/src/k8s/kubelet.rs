//! The pod runtime, as a kubelet on the one node: runs each container of a pod as a process
//! in the pod's network namespace and in a cgroup named after the container id, reports the
//! pod's status (phase, container states, readiness, IP), keeps each container's log, and
//! removes everything when the pod is deleted.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::net::{in_netns, PodNet};
use super::{jobs, util, workloads, Sim};
use crate::cluster::lock;

/// How long a pull error shows `ErrImagePull` before `ImagePullBackOff`.
const PULL_BACKOFF_AFTER: Duration = Duration::from_millis(800);
/// How long after creation a pod rejected by the "Pod Security" fault is deleted.
const ADMISSION_DELETE_AFTER: Duration = Duration::from_millis(200);
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// After this long without success a probe slows down to [`SLOW_PROBE_INTERVAL`] (a pod meant
/// never to be ready should not cost a thread every 100 ms).
const PROBE_FAST_FOR: Duration = Duration::from_secs(5);
const SLOW_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The node's address as pods report it (`status.hostIP`; nothing listens there).
const HOST_IP: &str = "10.244.0.1";
pub(crate) const NODE_NAME: &str = "sim-node";

#[derive(Clone, Debug)]
enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started: String,
        ready: bool,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: String,
        started: String,
        finished: String,
    },
}

struct Container {
    name: String,
    image: String,
    id: Option<String>,
    log: Option<PathBuf>,
    state: State,
    ephemeral: bool,
}

struct PodRuntime {
    uid: String,
    net: Option<PodNet>,
    start_time: Option<String>,
    containers: Vec<Container>,
    deleting: bool,
}

/// A container process exited.
struct Exit {
    ns: String,
    pod: String,
    uid: String,
    container: String,
    status: std::io::Result<ExitStatus>,
}

pub(crate) struct Kubelet {
    /// (namespace, pod name) → runtime state.
    pods: Mutex<HashMap<(String, String), PodRuntime>>,
    /// wait threads --exits--> `run_exit_loop`
    exit_tx: mpsc::UnboundedSender<Exit>,
    exit_rx: Mutex<Option<mpsc::UnboundedReceiver<Exit>>>,
}

impl Default for Kubelet {
    fn default() -> Self {
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        Kubelet {
            pods: Mutex::new(HashMap::new()),
            exit_tx,
            exit_rx: Mutex::new(Some(exit_rx)),
        }
    }
}

fn key(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

impl Kubelet {
    /// The network namespace of a pod that has one.
    pub fn netns(&self, ns: &str, name: &str) -> Option<String> {
        lock(&self.pods)
            .get(&key(ns, name))
            .and_then(|p| p.net.as_ref().map(|n| n.netns.clone()))
    }

    /// The log file of a container (`container` empty: the pod's default container) and
    /// whether the container is finished (terminated, or its pod gone). The error is the
    /// `Status` to answer with.
    pub fn log_file(
        &self,
        sim: &Sim,
        ns: &str,
        pod: &str,
        container: &str,
    ) -> Result<(PathBuf, bool), Value> {
        let pods = lock(&self.pods);
        let bad = |msg: String| util::status(400, "BadRequest", &msg, Value::Null);
        let Some(rt) = pods.get(&key(ns, pod)) else {
            return Err(util::not_found("pods", "pods", "", pod));
        };
        let name = if container.is_empty() {
            let regular: Vec<&Container> = rt.containers.iter().filter(|c| !c.ephemeral).collect();
            let default = sim.store.get("pods", ns, pod).and_then(|p| {
                p["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"]
                    .as_str()
                    .map(str::to_string)
            });
            match (default, regular.as_slice()) {
                (Some(d), _) => d,
                (None, [only]) => only.name.clone(),
                (None, many) => {
                    let names: Vec<&str> = many.iter().map(|c| c.name.as_str()).collect();
                    return Err(bad(format!(
                        "a container name must be specified for pod {pod}, choose one of: [{}]",
                        names.join(" ")
                    )));
                }
            }
        } else {
            container.to_string()
        };
        let Some(c) = rt.containers.iter().find(|c| c.name == name) else {
            return Err(bad(format!("container {name} is not valid for pod {pod}")));
        };
        match (&c.log, &c.state) {
            (Some(log), state) => Ok((
                log.clone(),
                rt.deleting || matches!(state, State::Terminated { .. }),
            )),
            (None, State::Waiting { reason, .. }) => Err(bad(format!(
                "container \"{name}\" in pod \"{pod}\" is waiting to start: {reason}"
            ))),
            (None, _) => Err(bad(format!(
                "container \"{name}\" in pod \"{pod}\" has no log"
            ))),
        }
    }

    /// Whether a container is finished (terminated, or its pod is gone or being deleted).
    pub fn container_finished(&self, ns: &str, pod: &str, log: &std::path::Path) -> bool {
        let pods = lock(&self.pods);
        let Some(rt) = pods.get(&key(ns, pod)) else {
            return true;
        };
        rt.deleting
            || rt.containers.iter().any(|c| {
                c.log.as_deref() == Some(log) && matches!(c.state, State::Terminated { .. })
            })
    }

    /// Sets the state of one container; returns false when the pod is gone or being deleted.
    fn set_state(&self, ns: &str, pod: &str, container: &str, state: State) -> bool {
        let mut pods = lock(&self.pods);
        let Some(rt) = pods.get_mut(&key(ns, pod)) else {
            return false;
        };
        if rt.deleting {
            return false;
        }
        if let Some(c) = rt.containers.iter_mut().find(|c| c.name == container) {
            c.state = state;
        }
        true
    }

    fn is_live(&self, ns: &str, pod: &str, uid: &str) -> bool {
        lock(&self.pods)
            .get(&key(ns, pod))
            .is_some_and(|rt| rt.uid == uid && !rt.deleting)
    }

    /// The pod's status object, computed from its runtime state.
    fn render_status(&self, ns: &str, pod: &str) -> Option<Value> {
        let pods = lock(&self.pods);
        let rt = pods.get(&key(ns, pod))?;
        let status_of = |c: &Container| {
            let mut s = json!({
                "name": c.name,
                "image": c.image,
                "imageID": format!("{}@sha256:{}", c.image.split(':').next().unwrap_or(""), "0".repeat(64)),
                "restartCount": 0,
                "ready": false,
                "started": false,
            });
            if let Some(id) = &c.id {
                s["containerID"] = json!(format!("containerd://{id}"));
            }
            match &c.state {
                State::Waiting { reason, message } => {
                    let mut w = json!({"reason": reason});
                    if !message.is_empty() {
                        w["message"] = json!(message);
                    }
                    s["state"] = json!({"waiting": w});
                }
                State::Running { started, ready } => {
                    s["state"] = json!({"running": {"startedAt": started}});
                    s["ready"] = json!(ready);
                    s["started"] = json!(true);
                }
                State::Terminated {
                    exit_code,
                    reason,
                    message,
                    started,
                    finished,
                } => {
                    let mut t = json!({
                        "exitCode": exit_code,
                        "reason": reason,
                        "startedAt": started,
                        "finishedAt": finished,
                    });
                    if !message.is_empty() {
                        t["message"] = json!(message);
                    }
                    if let Some(id) = &c.id {
                        t["containerID"] = json!(format!("containerd://{id}"));
                    }
                    s["state"] = json!({"terminated": t});
                }
            }
            s
        };
        let regular: Vec<&Container> = rt.containers.iter().filter(|c| !c.ephemeral).collect();
        let ephemeral: Vec<&Container> = rt.containers.iter().filter(|c| c.ephemeral).collect();
        let all_terminated = regular
            .iter()
            .all(|c| matches!(c.state, State::Terminated { .. }));
        let any_waiting = regular
            .iter()
            .any(|c| matches!(c.state, State::Waiting { .. }));
        let phase = if !regular.is_empty() && all_terminated {
            let ok = regular
                .iter()
                .all(|c| matches!(c.state, State::Terminated { exit_code: 0, .. }));
            if ok {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if any_waiting {
            "Pending"
        } else {
            "Running"
        };
        let all_ready = phase == "Running"
            && regular
                .iter()
                .all(|c| matches!(c.state, State::Running { ready: true, .. }));
        let now = util::now();
        let cond = |t: &str, ok: bool| {
            json!({"type": t, "status": if ok { "True" } else { "False" },
                   "lastProbeTime": null, "lastTransitionTime": now})
        };
        let mut status = json!({
            "phase": phase,
            "conditions": [
                cond("PodReadyToStartContainers", rt.net.is_some()),
                cond("Initialized", true),
                cond("Ready", all_ready),
                cond("ContainersReady", all_ready),
                cond("PodScheduled", true),
            ],
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "qosClass": "BestEffort",
            "containerStatuses": regular.iter().map(|c| status_of(c)).collect::<Vec<_>>(),
        });
        if let Some(t) = &rt.start_time {
            status["startTime"] = json!(t);
        }
        if let Some(n) = &rt.net {
            status["podIP"] = json!(n.ip.to_string());
            status["podIPs"] = json!([{"ip": n.ip.to_string()}]);
        }
        if !ephemeral.is_empty() {
            status["ephemeralContainerStatuses"] =
                json!(ephemeral.iter().map(|c| status_of(c)).collect::<Vec<_>>());
        }
        Some(status)
    }
}

/// Writes the pod's current status to the store (and lets its Job follow).
fn publish(sim: &Arc<Sim>, ns: &str, pod: &str) {
    let Some(status) = sim.kubelet.render_status(ns, pod) else {
        return;
    };
    let Some(updated) = sim.store.update("pods", ns, pod, |p| p["status"] = status) else {
        return;
    };
    if let Some(job) = updated["metadata"]["labels"]["job-name"].as_str() {
        jobs::sync_status(sim, ns, job);
    }
    workloads::refresh_status(sim, ns);
}

/// Runs a pod that is already in the store (as created through the API): network, images,
/// containers, readiness. Problems show in the pod's status, as on a node.
pub(crate) async fn start_pod(sim: &Arc<Sim>, ns: &str, name: &str) -> Result<()> {
    let pod = sim
        .store
        .get("pods", ns, name)
        .with_context(|| format!("pod {ns}/{name} is gone"))?;
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let specs: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let containers = specs
        .iter()
        .map(|c| Container {
            name: c["name"].as_str().unwrap_or_default().to_string(),
            image: c["image"].as_str().unwrap_or_default().to_string(),
            id: None,
            log: None,
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            ephemeral: false,
        })
        .collect();
    lock(&sim.kubelet.pods).insert(
        key(ns, name),
        PodRuntime {
            uid: uid.clone(),
            net: None,
            start_time: Some(util::now()),
            containers,
            deleting: false,
        },
    );
    publish(sim, ns, name);

    let is_job_pod = pod["metadata"]["labels"]["job-name"].is_string();
    if is_job_pod && sim.faults.delete_job_pods() {
        tokio::time::sleep(ADMISSION_DELETE_AFTER).await;
        delete_pod(sim, ns, name).await;
        return Ok(());
    }

    let mut pull_failed = false;
    for c in &specs {
        let (cname, image) = (
            c["name"].as_str().unwrap_or_default(),
            c["image"].as_str().unwrap_or_default(),
        );
        if let Some(message) = pull_error(sim, image) {
            pull_failed = true;
            sim.kubelet.set_state(
                ns,
                name,
                cname,
                State::Waiting {
                    reason: "ErrImagePull".into(),
                    message,
                },
            );
            let (sim, ns, name, cname, image) = (
                sim.clone(),
                ns.to_string(),
                name.to_string(),
                cname.to_string(),
                image.to_string(),
            );
            tokio::spawn(async move {
                tokio::time::sleep(PULL_BACKOFF_AFTER).await;
                let state = State::Waiting {
                    reason: "ImagePullBackOff".into(),
                    message: format!("Back-off pulling image \"{image}\""),
                };
                if sim.kubelet.set_state(&ns, &name, &cname, state) {
                    publish(&sim, &ns, &name);
                }
            });
        }
    }
    if pull_failed {
        publish(sim, ns, name);
        return Ok(());
    }

    let net_sim = sim.clone();
    let k8s_ns = ns.to_string();
    let podnet = tokio::task::spawn_blocking(move || net_sim.net.add_pod(&k8s_ns))
        .await
        .context("network set-up task")??;
    {
        let mut pods = lock(&sim.kubelet.pods);
        match pods.get_mut(&key(ns, name)) {
            Some(rt) if rt.uid == uid && !rt.deleting => rt.net = Some(podnet.clone()),
            // Deleted meanwhile: its namespace goes too.
            _ => {
                drop(pods);
                let _ = sim.net.remove_pod(&podnet.netns);
                return Ok(());
            }
        }
    }
    for c in &specs {
        run_container(sim, ns, name, &uid, &pod, &podnet, c, false)?;
    }
    publish(sim, ns, name);
    Ok(())
}

/// Why pulling `image` fails, if it does.
fn pull_error(sim: &Sim, image: &str) -> Option<String> {
    if sim.faults.image_pull_fails(image) || sim.binary_for(image).is_none() {
        Some(format!(
            "failed to pull and unpack image \"{image}\": failed to resolve reference \
             \"{image}\": {image}: not found"
        ))
    } else {
        None
    }
}

/// Starts one container's process; its readiness probe (if any) runs on its own task.
#[allow(clippy::too_many_arguments)]
fn run_container(
    sim: &Arc<Sim>,
    ns: &str,
    pod_name: &str,
    uid: &str,
    pod: &Value,
    podnet: &PodNet,
    spec: &Value,
    ephemeral: bool,
) -> Result<()> {
    let cname = spec["name"].as_str().unwrap_or_default().to_string();
    let image = spec["image"].as_str().unwrap_or_default();
    let binary = sim
        .binary_for(image)
        .ok_or_else(|| anyhow!("no binary for image {image}"))?;
    let cid = util::container_id();
    let cgroup = sim.net.container_cgroup(uid, &cid)?;
    let procs =
        CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).context("cgroup path")?;
    let log_path = sim
        .workdir
        .join("logs")
        .join(format!("{ns}_{pod_name}_{cname}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let command = strings(&spec["command"]);
    let mut args: Vec<String> = command.into_iter().skip(1).collect();
    args.extend(strings(&spec["args"]));
    let mut env: Vec<(String, String)> = Vec::new();

    let mut cmd = sim.net.cmd(&podnet.netns, &binary);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOSTNAME", pod_name)
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .env("KUBERNETES_SERVICE_PORT", "443")
        .current_dir(spec["workingDir"].as_str().unwrap_or("/"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    for e in spec["env"].as_array().into_iter().flatten() {
        let Some(var) = e["name"].as_str() else {
            continue;
        };
        let value = if let Some(v) = e["value"].as_str() {
            Some(v.to_string())
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => Some(pod_name.to_string()),
                Some("metadata.namespace") => Some(ns.to_string()),
                Some("metadata.uid") => Some(uid.to_string()),
                Some("status.podIP") => Some(podnet.ip.to_string()),
                Some("spec.nodeName") => pod["spec"]["nodeName"].as_str().map(str::to_string),
                _ => None,
            }
        };
        if let Some(v) = value {
            env.push((var.to_string(), v));
        }
    }
    // `$(VAR)` in command and args expands to the container's env, as the kubelet does.
    let args: Vec<String> = args.iter().map(|a| expand(a, &env)).collect();
    cmd.args(&args).envs(env.iter().map(|(k, v)| (k, v)));
    // SAFETY: the closure only calls async-signal-safe functions (open, write, close) on
    // memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Joins the container's cgroup before exec: the process and its children are
            // in it from their first instruction, so the agent always finds them by id.
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting container {cname} of {ns}/{pod_name}"))?;

    let probe_port = readiness_port(spec);
    let started = util::now();
    {
        let mut pods = lock(&sim.kubelet.pods);
        if let Some(rt) = pods.get_mut(&key(ns, pod_name)) {
            let state = State::Running {
                started: started.clone(),
                ready: probe_port.is_none() && !ephemeral,
            };
            let container = Container {
                name: cname.clone(),
                image: image.to_string(),
                id: Some(cid.clone()),
                log: Some(log_path.clone()),
                state,
                ephemeral,
            };
            match rt.containers.iter_mut().find(|c| c.name == cname) {
                Some(c) => *c = container,
                None => rt.containers.push(container),
            }
        }
    }

    let exit_tx = sim.kubelet.exit_tx.clone();
    let exit = Exit {
        ns: ns.to_string(),
        pod: pod_name.to_string(),
        uid: uid.to_string(),
        container: cname.clone(),
        status: Ok(ExitStatus::from_raw(0)),
    };
    std::thread::Builder::new()
        .name("k8s-sim-wait".into())
        .spawn(move || {
            let status = child.wait();
            // A closed receiver means the simulator is shutting down: nothing to report.
            let _ = exit_tx.send(Exit { status, ..exit });
        })
        .context("spawning a wait thread")?;

    if let Some(port) = probe_port {
        let (sim, ns, pod_name, uid, netns) = (
            sim.clone(),
            ns.to_string(),
            pod_name.to_string(),
            uid.to_string(),
            podnet.netns.clone(),
        );
        sim.handle().clone().spawn(async move {
            probe_until_ready(sim, ns, pod_name, uid, cname, netns, port, started).await;
        });
    }
    Ok(())
}

/// Expands `$(VAR)` from `env` (`$$` is a literal `$`; unknown names stay as written).
fn expand(arg: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after_dollar) = after.strip_prefix('$') {
            out.push('$');
            rest = after_dollar;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The port of a `tcpSocket` or `httpGet` readiness probe (a named port resolved through
/// the container's ports).
fn readiness_port(spec: &Value) -> Option<u16> {
    let probe = &spec["readinessProbe"];
    let port = if probe["tcpSocket"].is_object() {
        &probe["tcpSocket"]["port"]
    } else {
        &probe["httpGet"]["port"]
    };
    match port {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(name) => spec["ports"].as_array()?.iter().find_map(|p| {
            (p["name"].as_str() == Some(name))
                .then(|| p["containerPort"].as_u64())
                .flatten()
                .and_then(|n| u16::try_from(n).ok())
        }),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn probe_until_ready(
    sim: Arc<Sim>,
    ns: String,
    pod: String,
    uid: String,
    container: String,
    netns: String,
    port: u16,
    started: String,
) {
    let probing_since = std::time::Instant::now();
    loop {
        if !sim.kubelet.is_live(&ns, &pod, &uid) {
            return;
        }
        let ns_name = netns.clone();
        let ok = tokio::task::spawn_blocking(move || {
            in_netns(&ns_name, move || {
                std::net::TcpStream::connect_timeout(
                    &([127, 0, 0, 1], port).into(),
                    Duration::from_millis(500),
                )
                .map(|_| ())
            })
            .is_ok()
        })
        .await
        .unwrap_or(false);
        if ok {
            let state = State::Running {
                started: started.clone(),
                ready: true,
            };
            let still_running = lock(&sim.kubelet.pods)
                .get(&key(&ns, &pod))
                .and_then(|rt| rt.containers.iter().find(|c| c.name == container))
                .is_some_and(|c| matches!(c.state, State::Running { .. }));
            if still_running && sim.kubelet.set_state(&ns, &pod, &container, state) {
                publish(&sim, &ns, &pod);
            }
            return;
        }
        let interval = if probing_since.elapsed() < PROBE_FAST_FOR {
            PROBE_INTERVAL
        } else {
            SLOW_PROBE_INTERVAL
        };
        tokio::time::sleep(interval).await;
    }
}

/// Receives container exits from the wait threads and reports them.
pub(crate) async fn run_exit_loop(sim: Arc<Sim>) {
    let Some(mut exit_rx) = lock(&sim.kubelet.exit_rx).take() else {
        return;
    };
    while let Some(exit) = exit_rx.recv().await {
        if !sim.kubelet.is_live(&exit.ns, &exit.pod, &exit.uid) {
            continue;
        }
        let (exit_code, signal) = match &exit.status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => (c, None),
                (None, Some(sig)) => (128 + sig, Some(sig)),
                (None, None) => (255, None),
            },
            Err(_) => (255, None),
        };
        let log = lock(&sim.kubelet.pods)
            .get(&key(&exit.ns, &exit.pod))
            .and_then(|rt| rt.containers.iter().find(|c| c.name == exit.container))
            .and_then(|c| c.log.clone());
        let message = match (exit_code, &log) {
            (0, _) | (_, None) => String::new(),
            (_, Some(path)) => {
                let text = fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(10)..].join("\n")
            }
        };
        let started = lock(&sim.kubelet.pods)
            .get(&key(&exit.ns, &exit.pod))
            .and_then(|rt| rt.containers.iter().find(|c| c.name == exit.container))
            .and_then(|c| match &c.state {
                State::Running { started, .. } => Some(started.clone()),
                _ => None,
            })
            .unwrap_or_else(util::now);
        let reason = match (exit_code, signal) {
            (0, _) => "Completed",
            (_, Some(9)) => "Killed",
            _ => "Error",
        };
        let state = State::Terminated {
            exit_code,
            reason: reason.into(),
            message,
            started,
            finished: util::now(),
        };
        if sim
            .kubelet
            .set_state(&exit.ns, &exit.pod, &exit.container, state)
        {
            publish(&sim, &exit.ns, &exit.pod);
        }
    }
}

/// Deletes a pod as the API does after its grace period: marks it (`deletionTimestamp`),
/// kills its processes, removes its network namespace and cgroups, then removes the object.
pub(crate) async fn delete_pod(sim: &Arc<Sim>, ns: &str, name: &str) -> Option<Value> {
    let marked = sim.store.update("pods", ns, name, |p| {
        p["metadata"]["deletionTimestamp"] = json!(util::now());
        p["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    })?;
    let uid = marked["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let netns = {
        let mut pods = lock(&sim.kubelet.pods);
        match pods.get_mut(&key(ns, name)) {
            Some(rt) if rt.uid == uid => {
                rt.deleting = true;
                rt.net.as_ref().map(|n| n.netns.clone())
            }
            _ => None,
        }
    };
    let net_sim = sim.clone();
    let cleanup_uid = uid.clone();
    let cleaned = tokio::task::spawn_blocking(move || {
        net_sim.net.remove_pod_cgroups(&cleanup_uid);
        match netns {
            Some(netns) => net_sim.net.remove_pod(&netns),
            None => Ok(()),
        }
    })
    .await;
    if let Ok(Err(e)) | Err(e) = cleaned.map_err(|e| anyhow!(e)) {
        tracing::warn!("removing pod {ns}/{name}: {e:#}");
    }
    {
        let mut pods = lock(&sim.kubelet.pods);
        if pods.get(&key(ns, name)).is_some_and(|rt| rt.uid == uid) {
            pods.remove(&key(ns, name));
        }
    }
    let deleted = sim.store.delete("pods", ns, name);
    if let Some(job) = marked["metadata"]["labels"]["job-name"].as_str() {
        jobs::sync_status(sim, ns, job);
    }
    workloads::refresh_status(sim, ns);
    deleted
}

/// Starts an ephemeral container (as added through `pods/NAME/ephemeralcontainers`) in the
/// network namespace of its pod.
pub(crate) fn start_ephemeral(sim: &Arc<Sim>, ns: &str, pod_name: &str, spec: &Value) {
    let cname = spec["name"].as_str().unwrap_or_default().to_string();
    let image = spec["image"].as_str().unwrap_or_default().to_string();
    let (uid, net) = {
        let mut pods = lock(&sim.kubelet.pods);
        let Some(rt) = pods.get_mut(&key(ns, pod_name)) else {
            return;
        };
        rt.containers.push(Container {
            name: cname.clone(),
            image: image.clone(),
            id: None,
            log: None,
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            ephemeral: true,
        });
        (rt.uid.clone(), rt.net.clone())
    };
    let result = match (pull_error(sim, &image), net) {
        (Some(message), _) => {
            sim.kubelet.set_state(
                ns,
                pod_name,
                &cname,
                State::Waiting {
                    reason: "ErrImagePull".into(),
                    message,
                },
            );
            Ok(())
        }
        (None, None) => Err(anyhow!("pod {ns}/{pod_name} is not running")),
        (None, Some(net)) => match sim.store.get("pods", ns, pod_name) {
            Some(pod) => run_container(sim, ns, pod_name, &uid, &pod, &net, spec, true),
            None => Ok(()),
        },
    };
    if let Err(e) = result {
        sim.kubelet.set_state(
            ns,
            pod_name,
            &cname,
            State::Waiting {
                reason: "CreateContainerError".into(),
                message: format!("{e:#}"),
            },
        );
    }
    publish(sim, ns, pod_name);
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_env_references_like_the_kubelet() {
        let env = vec![("POD".to_string(), "api-1".to_string())];
        assert_eq!(expand("--name=$(POD)", &env), "--name=api-1");
        assert_eq!(expand("$(MISSING)/x", &env), "$(MISSING)/x");
        assert_eq!(expand("$$(POD) costs $5", &env), "$(POD) costs $5");
        assert_eq!(expand("$(POD", &env), "$(POD");
    }
}
