//! A simulated Kubernetes cluster with a real (HTTPS, bearer token) Kubernetes API server,
//! backed by Linux network namespaces: what the Kubernetes end-to-end tests and
//! `./scripts/cluster` run on.
//!
//! # Quick start (Rust test API)
//!
//! ```no_run
//! use mirrord_tests::k8s::{SimCluster, SimOptions};
//! let sim = SimCluster::start(SimOptions {
//!     agent_bin: Some(mirrord_tests::target_dir_bin("mirrord-agent")),
//!     ..SimOptions::default()
//! })
//! .unwrap();
//! // A real kubeconfig: server https://127.0.0.1:PORT, reachable from the dev namespace only.
//! let mut mirrord = sim.dev_cmd("target/debug/mirrord");
//! mirrord.env("KUBECONFIG", sim.kubeconfig());
//! let ip = sim.pod_ip("payments", &sim.pods_of("payments", "app=payment-api")[0]).unwrap();
//! let mut curl = sim.client_cmd("curl");
//! curl.arg(format!("http://{ip}/hello"));
//! ```
//!
//! Everything (processes, namespaces, cgroups, files) is removed when the [`SimCluster`] drops,
//! also while unwinding from a failed test; what a killed test process left behind is swept by
//! the next one.
//!
//! ## API of [`SimCluster`]
//! - `SimCluster::start(SimOptions) -> anyhow::Result<SimCluster>`: returns once every seeded
//!   pod that should be ready is ready and the cluster DNS answers.
//! - `kubeconfig() -> &Path`, `server_url() -> String`, `api_port() -> u16`, `token() -> &str`,
//!   `ca_pem() -> &str`; constants `PAYMENT_SERVICE_IP`, `DNS_IP`, `POD_CIDR`, `SVC_CIDR`,
//!   `NAMESPACE` (`payments`, also the kubeconfig context's namespace).
//! - `k8s::sweep_stale()` removes what dead simulators left (runs by itself at the first start).
//! - `dev_cmd(program) -> Command` (developer namespace: loopback only, the API is on its
//!   127.0.0.1), `client_cmd(program) -> Command` (a namespace on the pod network, to send
//!   traffic to pods), `pod_cmd(ns, pod, program) -> Result<Command>` (inside a pod's network
//!   namespace); `ns_dev()`, `ns_client()`, `id()`, `workdir()`;
//!   `run_in_dev(f) -> Result<T>` runs a closure on a thread inside the dev namespace (e.g. a
//!   kube-rs client on a current-thread runtime, to check the API from a test).
//! - `pod_ip(ns, name) -> Option<Ipv4Addr>`, `pod_netns(ns, name) -> Option<String>`,
//!   `service_ip(ns, name) -> Option<Ipv4Addr>`, `pods_of(ns, label_selector) -> Vec<String>`.
//! - Inspection (the stored JSON, as the API returns it): `get(plural, ns, name) ->
//!   Option<Value>`, `list(plural, ns) -> Vec<Value>`, `pods(ns)`, `jobs(ns)`,
//!   `agent_pods() -> Vec<Value>` (pods labelled `app=mirrord` in every namespace, plus pods
//!   with a running ephemeral container), `pod_log(ns, pod, container) -> Option<String>`.
//! - Changes: `create(plural, ns, object: Value) -> Result<Value>` (as a POST would: pods and
//!   jobs start running), `delete(plural, ns, name) -> Result<()>` (as a DELETE with
//!   `propagationPolicy=Background`).
//! - Faults: `forbid(verb, resource, ns)` (403 like RBAC; `resource` as RBAC names it:
//!   `jobs`, `pods`, `pods/portforward`, `pods/ephemeralcontainers`), `allow_all()`,
//!   `fail_image_pull(image)` / `restore_image_pull(image)` (ErrImagePull then
//!   ImagePullBackOff), `delete_job_pods(bool)` (every pod a Job creates is deleted right after
//!   it is created, as when Pod Security admission rejects it), `drop_port_forwards()` (every
//!   port-forward connection open now is cut, once), `take_api_down(Duration)` (the API server
//!   goes down for that long as a restart does: every open connection, port-forwards included,
//!   is cut, and new ones are closed on accept until the period ends), `set_api_latency(Duration)` (added to every
//!   API response), `clear_faults()` (all of them off). `k8s-sim` (and so `./scripts/cluster
//!   fault`) applies the same faults from a JSON file on SIGUSR1.
//!
//! ## Fixtures (seeded at start)
//! Kubernetes namespaces `default` and `payments`. In `payments`:
//! - deployment `payment-api` (2 replicas, labels `app=payment-api`) with its replicaset and
//!   pods `payment-api-<hash>-<5>`: each runs `services/pod_http.py --name <pod name>` on port
//!   80 (answers `<pod name>: METHOD PATH`, header `x-served-by: <pod name>`);
//! - deployment `payment-service` with one pod running `services/svc.py` (HTTP 8080, TCP echo
//!   9000, UDP echo 9001, `GET /bytes` 100 MiB) and service `payment-service` (port 8080, ClusterIP
//!   [`SimCluster::PAYMENT_SERVICE_IP`], the address the cluster DNS gives
//!   `payment-service.payments.svc.cluster.local`; the pod answers on that address itself: there
//!   is no kube-proxy);
//! - pod `meshed-api`: containers `istio-proxy` (first, a sleeping process) and `app` (HTTP 80);
//! - pod `annotated-api`: annotation `kubectl.kubernetes.io/default-container: main`, containers
//!   `helper` (sleeping) then `main` (HTTP 80);
//! - deployment `half-ready` (`app=half-ready`): pod `half-ready-6d5f8b7c9d-bbbbb` Running but not
//!   ready (its readiness probe checks a port nothing listens on), then pod
//!   `half-ready-6d5f8b7c9d-ccccc` ready (HTTP 80);
//! - statefulset `ledger` with pod `ledger-0`; replicaset `worker` with one pod; job
//!   `batch-report` with one running pod; cronjob `nightly` whose active job `nightly-29000000`
//!   has one running pod (all HTTP 80);
//! - rollouts (argoproj.io/v1alpha1) `payment-rollout` (`workloadRef` to deployment
//!   `payment-api`) and `canary-rollout` (`selector` `app=canary`, one running pod);
//! - service `orphan-service` whose selector matches no pod.
//!
//! Every running container has its own process in cgroup
//! `/sys/fs/cgroup/unified/mirrord-sim-<id>/<pod uid>/<container id>` (so `/proc/PID/cgroup`
//! names the id as on a node) and `status.containerStatuses[].containerID` is
//! `containerd://<id>`. Every pod has its own network namespace and address on the bridge and a
//! resolv.conf for its Kubernetes namespace (`search <ns>.svc.cluster.local svc.cluster.local
//! cluster.local`, `ndots:5`).
//!
//! ## Images and what runs
//! A container runs a local binary chosen by its image: the first rule of
//! [`SimOptions::images`] that matches (see [`ImageRule`]), then the built-in images of the
//! fixtures (`mirrord-sim/python:3` → `/usr/bin/python3`, `mirrord-sim/sleep:1` →
//! `/usr/bin/sleep`), then [`SimOptions::agent_bin`] for any other image. No match: the pod
//! stays Pending with `ErrImagePull`. The argv is the container's `command` + `args` with
//! `command[0]` replaced by that binary (no `command`: the binary then `args`); the environment
//! is `PATH`, `HOSTNAME`, `KUBERNETES_SERVICE_HOST/PORT` and the container's `env` (`value`,
//! and `valueFrom.fieldRef` for `metadata.name`, `metadata.namespace`, `metadata.uid`,
//! `status.podIP`, `spec.nodeName`). stdout and stderr are the container's log.
//!
//! ## Kubelet and controllers
//! A pod is Pending, then Running once its processes run; a container is ready at once, or,
//! with a `tcpSocket`/`httpGet` readiness probe, once its port accepts connections. When every
//! container has exited the pod is Succeeded (all exit 0) or Failed, with `exitCode`, `reason`
//! (`Completed`/`Error`) and, on failure, the log's last lines as `message`. Creating a Job
//! creates its pod `<job>-<5 random>` (labels `job-name`, `controller-uid`, ownerReference) and
//! runs it; the Job's status follows its pod (`active`, `ready`, `succeeded`/`failed`,
//! conditions `Complete`/`Failed`) and `ttlSecondsAfterFinished` deletes it and its pod. Deleting
//! a Job with `propagationPolicy` `Background` or `Foreground` deletes its pods; without one (or
//! `Orphan`) they are left, as the real API does for batch/v1 Jobs. Deleting a pod kills its
//! processes and removes its namespace (a MODIFIED event with `deletionTimestamp`, then
//! DELETED). Deployments, replicasets and statefulsets get no pods from the simulator (there
//! is no scheduling controller: pods of workloads created through the API must be created too);
//! their `status` (replicas, readyReplicas, ...) follows the pods their selector matches.
//! An ephemeral container added through `pods/NAME/ephemeralcontainers` (PUT or PATCH) runs in
//! the pod's network namespace (cgroup of its own), is reported in
//! `status.ephemeralContainerStatuses`, and its log is `log?container=NAME`.
//!
//! ## Services
//! Every Service's name (`NAME.NS.svc.cluster.local`) resolves to its ClusterIP in the cluster
//! DNS, also for services created through the API. There is no kube-proxy: the ClusterIP is
//! added to the interface of the first running pod the selector matches when the service is
//! created (no pod then: nothing answers on it), so connections to it reach that pod only.
//!
//! ## What is not served
//! `/openapi/v2` (kubectl's client-side validation: use `kubectl create --validate=false`),
//! aggregated discovery, server-side apply and JSON patch (except `add` on
//! `pods/NAME/ephemeralcontainers`), `deletecollection`, SPDY port-forward (kubectl 1.20's
//! `port-forward`), `exec`/`attach`, events, nodes. Services created through the API get a
//! ClusterIP but no DNS name and nothing answers on it (the fixtures' services do). Lists ignore
//! `limit` (everything comes in one page). `kubectl get` gets server-side Tables.
//!
//! ## Port-forward
//! `pods/NAME/portforward?ports=P[,Q]` upgrades to WebSocket `v4.channel.k8s.io` and connects
//! to `127.0.0.1:P` inside the pod's network namespace (see `portforward.rs`).

mod api;
mod faults;
mod jobs;
mod kubelet;
mod net;
mod portforward;
mod portforward_stream;
mod resources;
mod seed;
mod selector;
mod services;
mod store;
mod table;
mod tls;
mod util;
mod workloads;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Once, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::cluster::{
    base36, find_program, preflight, scratch_root, sweep_stale as sweep_stale_netns, COUNTER,
    PREFIX, SWEEP,
};

/// How long the seeded pods may take to become ready (many Python servers start at once on
/// a busy two-core machine).
const SEED_READY_TIMEOUT: Duration = Duration::from_secs(60);
const DNS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Set to keep the workdir (logs, kubeconfig) after the cluster drops.
const KEEP_ENV: &str = "MIRRORD_TESTS_KEEP_WORKDIR";

static CGROUP_SWEEP: Once = Once::new();

/// Removes what simulators and test runs that are no longer alive left behind (namespaces,
/// cgroups, /etc/netns dirs, workdirs). Runs by itself before the first cluster of a process.
pub fn sweep_stale() {
    SWEEP.call_once(sweep_stale_netns);
    CGROUP_SWEEP.call_once(net::sweep_stale_cgroups);
}

/// Which local binary runs a container image.
#[derive(Clone, Debug)]
pub struct ImageRule {
    /// `repo[:tag]` matched exactly, or a repository without a tag matching every tag of it
    /// (`busybox` matches `busybox:1.36`), or a prefix ending in `*`
    /// (`ghcr.io/metalbear-co/*`).
    pub image: String,
    pub binary: PathBuf,
}

impl ImageRule {
    pub fn new(image: impl Into<String>, binary: impl Into<PathBuf>) -> ImageRule {
        ImageRule {
            image: image.into(),
            binary: binary.into(),
        }
    }

    fn matches(&self, image: &str) -> bool {
        if let Some(prefix) = self.image.strip_suffix('*') {
            return image.starts_with(prefix);
        }
        if self.image == image {
            return true;
        }
        // A rule without a tag (or digest) matches every tag of its repository.
        repository(&self.image) == self.image && repository(image) == self.image
    }
}

/// `image` without its tag and digest (`localhost:5000/agent:1` → `localhost:5000/agent`).
fn repository(image: &str) -> &str {
    let repo = image.split('@').next().unwrap_or(image);
    // The tag is after the last ':' that follows the last '/' (a registry may have a port).
    let last_slash = repo.rfind('/').map_or(0, |i| i + 1);
    match repo[last_slash..].rfind(':') {
        Some(i) => &repo[..last_slash + i],
        None => repo,
    }
}

/// How to start a [`SimCluster`].
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// The binary for every image no rule names (normally `target/debug/mirrord-agent`).
    pub agent_bin: Option<PathBuf>,
    /// Image rules, tried in order before the built-in ones and `agent_bin`.
    pub images: Vec<ImageRule>,
    /// User name the API reports in 403 messages (default `mirrord-dev`).
    pub user: Option<String>,
}

/// Everything the API handlers, the kubelet and the Rust API share.
pub(crate) struct Sim {
    pub net: net::Network,
    pub store: store::Store,
    pub faults: faults::Faults,
    pub kubelet: kubelet::Kubelet,
    pub opts: SimOptions,
    pub token: String,
    pub user: String,
    pub workdir: PathBuf,
    pub handle: OnceLock<tokio::runtime::Handle>,
}

impl Sim {
    /// The runtime the simulator's tasks run on.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        // Invariant: set by the runtime thread before anything that spawns tasks runs (the
        // server, the seeding and the Rust API all start after `SimCluster::start` got it).
        self.handle.get().expect("runtime handle set at start")
    }

    /// The binary for `image`, as the module docs describe.
    pub fn binary_for(&self, image: &str) -> Option<PathBuf> {
        let builtin = [
            ImageRule::new(seed::PYTHON_IMAGE, crate::cluster::PYTHON),
            ImageRule::new(seed::SLEEP_IMAGE, "/usr/bin/sleep"),
        ];
        self.opts
            .images
            .iter()
            .chain(builtin.iter())
            .find(|r| r.matches(image))
            .map(|r| r.binary.clone())
            .or_else(|| self.opts.agent_bin.clone())
    }
}

/// A running simulated Kubernetes cluster; see the module docs. Dropping it removes
/// everything.
pub struct SimCluster {
    sim: Arc<Sim>,
    /// SimCluster --stop--> runtime thread
    shutdown_tx: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<JoinHandle<()>>,
    dnsmasq: Option<Child>,
    port: u16,
    ca_pem: String,
    kubeconfig: PathBuf,
}

impl SimCluster {
    /// payment-service's ClusterIP (what the cluster DNS gives its name).
    pub const PAYMENT_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
    /// The cluster DNS server.
    pub const DNS_IP: Ipv4Addr = net::DNS_IP;
    pub const POD_CIDR: &'static str = net::POD_CIDR;
    pub const SVC_CIDR: &'static str = net::SVC_CIDR;
    /// The Kubernetes namespace of the fixtures.
    pub const NAMESPACE: &'static str = "payments";

    /// Builds the cluster, starts the API and the seeded pods; see the module docs.
    pub fn start(opts: SimOptions) -> Result<SimCluster> {
        preflight()?;
        sweep_stale();

        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}-{}", base36(std::process::id()), base36(n));
        let workdir = scratch_root().join(&id);
        let tls = tls::generate()?;
        let sim = Arc::new(Sim {
            net: net::Network::new(&id),
            store: store::Store::new(),
            faults: faults::Faults::new(),
            kubelet: kubelet::Kubelet::default(),
            user: opts.user.clone().unwrap_or_else(|| "mirrord-dev".into()),
            opts,
            token: util::random_hex(24),
            workdir: workdir.clone(),
            handle: OnceLock::new(),
        });
        let mut cluster = SimCluster {
            sim: sim.clone(),
            shutdown_tx: None,
            runtime: None,
            dnsmasq: None,
            port: 0,
            ca_pem: tls.ca_pem.clone(),
            kubeconfig: workdir.join("kubeconfig"),
        };
        // From here on an error drops `cluster`, which removes whatever was made.
        fs::create_dir_all(workdir.join("logs"))
            .with_context(|| format!("creating {}", workdir.display()))?;
        sim.net
            .build()
            .with_context(|| format!("building the network of {id}"))?;
        cluster.start_dns()?;

        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<u16>>();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        cluster.shutdown_tx = Some(shutdown_tx);
        let server_config = tls.server_config.clone();
        let thread_sim = sim.clone();
        cluster.runtime = Some(
            std::thread::Builder::new()
                .name("k8s-sim".into())
                .spawn(move || run_runtime(thread_sim, server_config, ready_tx, shutdown_rx))
                .context("spawning the simulator thread")?,
        );
        cluster.port = ready_rx
            .recv()
            .map_err(|_| anyhow!("the simulator thread stopped while starting"))??;
        cluster.wait_dns()?;
        cluster.write_kubeconfig()?;
        Ok(cluster)
    }

    fn start_dns(&mut self) -> Result<()> {
        let conf = self.sim.workdir.join("dnsmasq.conf");
        fs::write(
            &conf,
            seed::dnsmasq_conf(&self.sim.net.id, &self.sim.workdir),
        )
        .context("writing dnsmasq.conf")?;
        fs::write(
            self.sim.workdir.join(services::HOSTS_FILE),
            seed::fixture_hosts(),
        )
        .context("writing the services' hosts file")?;
        let log = fs::File::create(self.sim.workdir.join("logs/dnsmasq.log"))?;
        let mut cmd = self
            .sim
            .net
            .cmd(&self.sim.net.ns_dns, find_program("dnsmasq")?);
        cmd.arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.dnsmasq = Some(cmd.spawn().context("starting dnsmasq")?);
        Ok(())
    }

    /// Polls a real lookup from the client namespace until dnsmasq answers.
    fn wait_dns(&mut self) -> Result<()> {
        let deadline = Instant::now() + DNS_READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .dnsmasq
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("dnsmasq exited ({status})");
            }
            let out = self
                .client_cmd("getent")
                .args(["hosts", seed::PAYMENT_SERVICE_FQDN])
                .env("RES_OPTIONS", "timeout:1 attempts:1")
                .output()
                .context("running getent in the client namespace")?;
            if out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .contains(&Self::PAYMENT_SERVICE_IP.to_string())
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the cluster DNS did not answer within {DNS_READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write_kubeconfig(&self) -> Result<()> {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        // JSON is YAML: kubectl and kube-rs both read it.
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "mirrord-sim", "cluster": {
                "server": self.server_url(),
                "certificate-authority-data": ca,
            }}],
            "users": [{"name": self.sim.user, "user": {"token": self.sim.token}}],
            "contexts": [{"name": "mirrord-sim", "context": {
                "cluster": "mirrord-sim",
                "user": self.sim.user,
                "namespace": Self::NAMESPACE,
            }}],
            "current-context": "mirrord-sim",
            "preferences": {},
        });
        let text = serde_json::to_string_pretty(&config)?;
        fs::write(&self.kubeconfig, text)
            .with_context(|| format!("writing {}", self.kubeconfig.display()))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&self.kubeconfig, fs::Permissions::from_mode(0o600))?;
        Ok(())
    }

    /// The unique id all names of this cluster carry.
    pub fn id(&self) -> &str {
        &self.sim.net.id
    }
    /// The kubeconfig file (server, CA, token; context namespace `payments`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
    /// `https://127.0.0.1:PORT` (inside the dev namespace).
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
    /// The API's port on the dev namespace's loopback.
    pub fn api_port(&self) -> u16 {
        self.port
    }
    /// The bearer token the API accepts.
    pub fn token(&self) -> &str {
        &self.sim.token
    }
    /// The CA certificate (PEM) the API's certificate is signed by.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    /// Scratch dir: `logs/` (container logs, dnsmasq), the kubeconfig.
    pub fn workdir(&self) -> &Path {
        &self.sim.workdir
    }
    /// The developer's namespace (loopback only; the API listens on its 127.0.0.1).
    pub fn ns_dev(&self) -> &str {
        &self.sim.net.ns_dev
    }
    /// A namespace on the pod network that sends traffic to pods.
    pub fn ns_client(&self) -> &str {
        &self.sim.net.ns_client
    }
    /// `program` inside the developer's namespace (`ip netns exec`, pid is `program`'s).
    pub fn dev_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.sim.net.cmd(&self.sim.net.ns_dev, program)
    }
    /// Runs `f` on a thread inside the developer's namespace and returns its result: sockets
    /// it makes (e.g. a kube-rs client on a current-thread runtime) live in that namespace, so
    /// they reach the API and nothing else.
    pub fn run_in_dev<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        net::in_netns(&self.sim.net.ns_dev, move || Ok(f()))
    }
    /// `program` inside the client namespace (on the pod network).
    pub fn client_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.sim.net.cmd(&self.sim.net.ns_client, program)
    }
    /// `program` inside the network namespace of pod `ns/name`.
    pub fn pod_cmd(
        &self,
        ns: &str,
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<Command> {
        let netns = self
            .pod_netns(ns, name)
            .with_context(|| format!("pod {ns}/{name} has no network namespace"))?;
        Ok(self.sim.net.cmd(&netns, program))
    }
    /// The network namespace (`ip netns` name) of a pod that runs.
    pub fn pod_netns(&self, ns: &str, name: &str) -> Option<String> {
        self.sim.kubelet.netns(ns, name)
    }
    /// A pod's address (`status.podIP`).
    pub fn pod_ip(&self, ns: &str, name: &str) -> Option<Ipv4Addr> {
        self.get("pods", ns, name)?["status"]["podIP"]
            .as_str()?
            .parse()
            .ok()
    }
    /// A service's ClusterIP.
    pub fn service_ip(&self, ns: &str, name: &str) -> Option<Ipv4Addr> {
        self.get("services", ns, name)?["spec"]["clusterIP"]
            .as_str()?
            .parse()
            .ok()
    }
    /// Names of the pods of `ns` matching a label selector (`app=payment-api`), sorted.
    pub fn pods_of(&self, ns: &str, label_selector: &str) -> Vec<String> {
        let Ok(sel) = selector::LabelSelector::parse(label_selector) else {
            return Vec::new();
        };
        let mut names: Vec<String> = self
            .pods(ns)
            .iter()
            .filter(|p| sel.matches(&p["metadata"]["labels"]))
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// An object as the API would return it.
    pub fn get(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let r = resources::RESOURCES.iter().find(|r| r.plural == plural)?;
        self.sim
            .store
            .get(r.plural, if r.namespaced { ns } else { "" }, name)
    }
    /// Every object of `plural` in `ns` (every namespace when `ns` is empty).
    pub fn list(&self, plural: &str, ns: &str) -> Vec<Value> {
        let Some(r) = resources::RESOURCES.iter().find(|r| r.plural == plural) else {
            return Vec::new();
        };
        self.sim
            .store
            .list(r.plural, (!ns.is_empty()).then_some(ns))
            .0
    }
    pub fn pods(&self, ns: &str) -> Vec<Value> {
        self.list("pods", ns)
    }
    pub fn jobs(&self, ns: &str) -> Vec<Value> {
        self.list("jobs", ns)
    }
    /// Pods labelled `app=mirrord` (agent Jobs' pods) in every namespace, and pods with an
    /// ephemeral container that has not terminated.
    pub fn agent_pods(&self) -> Vec<Value> {
        self.list("pods", "")
            .into_iter()
            .filter(|p| {
                p["metadata"]["labels"]["app"] == "mirrord"
                    || p["status"]["ephemeralContainerStatuses"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|c| c["state"]["terminated"].is_null()))
            })
            .collect()
    }
    /// What a container has written so far (`container` empty: the pod's only or default
    /// container).
    pub fn pod_log(&self, ns: &str, pod: &str, container: &str) -> Option<String> {
        let (path, _) = self
            .sim
            .kubelet
            .log_file(&self.sim, ns, pod, container)
            .ok()?;
        fs::read_to_string(path).ok()
    }

    /// Creates an object as a POST would (pods and Jobs start running).
    pub fn create(&self, plural: &str, ns: &str, object: Value) -> Result<Value> {
        let r = resources::RESOURCES
            .iter()
            .find(|r| r.plural == plural)
            .with_context(|| format!("unknown resource {plural}"))?;
        let sim = self.sim.clone();
        let ns = ns.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        self.sim.handle().spawn(async move {
            let _ = tx.send(api::create_object(&sim, r, &ns, object).await);
        });
        rx.recv()
            .context("the simulator stopped")?
            .map_err(|status| anyhow!("create {plural} failed: {}", status["message"]))
    }

    /// Deletes an object as a DELETE with `propagationPolicy=Background` would.
    pub fn delete(&self, plural: &str, ns: &str, name: &str) -> Result<()> {
        let r = resources::RESOURCES
            .iter()
            .find(|r| r.plural == plural)
            .with_context(|| format!("unknown resource {plural}"))?;
        let sim = self.sim.clone();
        let (ns, owned_name) = (ns.to_string(), name.to_string());
        let (tx, rx) = std::sync::mpsc::channel();
        self.sim.handle().spawn(async move {
            let _ = tx.send(api::delete_object(&sim, r, &ns, &owned_name, true).await);
        });
        rx.recv()
            .context("the simulator stopped")?
            .map(|_| ())
            .map_err(|status| anyhow!("delete {plural} {name} failed: {}", status["message"]))
    }

    /// Makes `verb` on `resource` in namespace `ns` fail with 403 Forbidden.
    pub fn forbid(&self, verb: &str, resource: &str, ns: &str) {
        self.sim.faults.forbid(verb, resource, ns);
    }
    /// Undoes every [`SimCluster::forbid`].
    pub fn allow_all(&self) {
        self.sim.faults.allow_all();
    }
    /// Pods with a container of `image` stay Pending: ErrImagePull, then ImagePullBackOff.
    pub fn fail_image_pull(&self, image: &str) {
        self.sim.faults.set_image_pull_failure(image, true);
    }
    pub fn restore_image_pull(&self, image: &str) {
        self.sim.faults.set_image_pull_failure(image, false);
    }
    /// While on, every pod a Job creates is deleted right after it is created (Pod Security
    /// admission).
    pub fn delete_job_pods(&self, on: bool) {
        self.sim.faults.set_delete_job_pods(on);
    }
    /// Cuts every port-forward connection open now (later ones work).
    pub fn drop_port_forwards(&self) {
        self.sim.faults.drop_port_forwards();
    }
    /// The API server goes down for `period`: every connection open now is cut, and new ones
    /// are closed on accept until `period` has passed.
    pub fn take_api_down(&self, period: Duration) {
        self.sim.faults.take_api_down(period);
    }
    /// Clears every fault ([`SimCluster::forbid`], [`SimCluster::fail_image_pull`],
    /// [`SimCluster::delete_job_pods`], [`SimCluster::set_api_latency`]).
    pub fn clear_faults(&self) {
        self.sim.faults.clear();
    }
    /// Delays every API response by `latency` (zero: none).
    pub fn set_api_latency(&self, latency: Duration) {
        self.sim.faults.set_latency(latency);
    }
}

/// The simulator thread: a tokio runtime serving the API and running the kubelet until
/// `shutdown_rx` fires (or its sender drops).
fn run_runtime(
    sim: Arc<Sim>,
    server_config: Arc<tokio_rustls::rustls::ServerConfig>,
    ready_tx: std::sync::mpsc::Sender<Result<u16>>,
    shutdown_rx: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("k8s-sim-rt")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready_tx.send(Err(anyhow!(e).context("building the tokio runtime")));
            return;
        }
    };
    // Invariant: the only place the handle is set.
    let _ = sim.handle.set(rt.handle().clone());
    rt.block_on(async move {
        let started = async {
            let listener = api::bind_in_dev(&sim).await?;
            let port = listener.local_addr()?.port();
            tokio::spawn(api::serve(sim.clone(), listener, server_config));
            tokio::spawn(kubelet::run_exit_loop(sim.clone()));
            seed::seed(&sim).await.context("seeding the fixtures")?;
            seed::wait_ready(&sim, SEED_READY_TIMEOUT).await?;
            anyhow::Ok(port)
        };
        let result = started.await;
        let ok = result.is_ok();
        let _ = ready_tx.send(result);
        if ok {
            let _ = shutdown_rx.await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
}

impl Drop for SimCluster {
    /// Stops the API and the kubelet, kills every process of the cluster and removes its
    /// namespaces, cgroups and files. Never panics.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.runtime.take() {
            let _ = t.join();
        }
        self.sim.net.teardown();
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!(
                "[k8s-sim {}] kept {}",
                self.id(),
                self.sim.workdir.display()
            );
        } else if let Err(e) = fs::remove_dir_all(&self.sim.workdir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("[k8s-sim {}] removing workdir: {e}", self.id());
            }
        }
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<SimCluster>();
};

#[cfg(test)]
mod tests {
    use super::ImageRule;

    #[test]
    fn image_rules_match_exactly_by_repository_or_by_prefix() {
        let busybox = ImageRule::new("busybox", "/bin/sh");
        assert!(busybox.matches("busybox"));
        assert!(busybox.matches("busybox:1.36"));
        assert!(busybox.matches("busybox@sha256:abcd"));
        assert!(!busybox.matches("busybox2:1"));
        assert!(!busybox.matches("docker.io/library/busybox:1"));

        let tagged = ImageRule::new("ghcr.io/x/agent:1.2", "/a");
        assert!(tagged.matches("ghcr.io/x/agent:1.2"));
        assert!(!tagged.matches("ghcr.io/x/agent:1.3"));

        let registry_port = ImageRule::new("localhost:5000/agent", "/a");
        assert!(registry_port.matches("localhost:5000/agent:latest"));
        assert!(!registry_port.matches("localhost:5000/other:latest"));

        let prefix = ImageRule::new("ghcr.io/metalbear-co/*", "/a");
        assert!(prefix.matches("ghcr.io/metalbear-co/mirrord:3.0"));
        assert!(!prefix.matches("ghcr.io/other/mirrord:3.0"));
    }
}
