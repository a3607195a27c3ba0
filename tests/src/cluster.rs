//! A simulated Kubernetes cluster made of Linux network namespaces.
//!
//! No API server can run on the test machines, so a "cluster" is a handful of network
//! namespaces, all named `<id>-<role>` with a unique `id` (`mrdt<pid base36>-<counter>`) so
//! that tests can run in parallel:
//!
//! ```text
//!                     <id>-br: bridge br0 (no address)
//!        v-pod       v-svc         v-dns         v-client        (bridge ports)
//!          |           |             |               |
//!   <id>-pod      <id>-svc       <id>-dns       <id>-client      (member side: eth0)
//!   10.244.0.10   10.96.0.50     10.96.0.10     10.244.0.20
//!   HTTP :80      payment-service dnsmasq       (sends traffic
//!   (the target)  :8080 HTTP      cluster.local   to the pod)
//!                 :9000 TCP echo
//!                 :9001 UDP echo
//!                 :8081 closed
//!
//!   <id>-dev: the developer's machine: loopback only, no routes.
//! ```
//!
//! Members have on-link routes for 10.244.0.0/16 and 10.96.0.0/12 over the bridge and
//! resolve with `/etc/netns/<ns>/resolv.conf` (cluster DNS, k8s search domains, `ndots:5`),
//! which `ip netns exec` bind-mounts over `/etc/resolv.conf` (also visible to others as
//! `/proc/<pid>/root/etc/resolv.conf`).
//!
//! **Safety rule: test traffic never leaves this machine.** The root namespace has a default
//! route to a network that is not ours, so nothing here ever sends from the root namespace to
//! a cluster address; no namespace of the cluster gets a default route, and `dev` has no
//! route at all. Run everything that talks to the cluster through [`Cluster::cmd`] (or
//! [`Cluster::dev`], [`Cluster::client`], ...), and keep loops bounded in count and time.
//!
//! Cleanup: dropping the [`Cluster`] (also while unwinding from a failed test) kills every
//! process in its namespaces, deletes the namespaces, their `/etc/netns` dirs and the
//! workdir. Namespaces left by a test process that was killed (its pid is part of the id) are
//! swept by the next process that starts a cluster.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::{run_ok, tee_lines, wait_line_on};

/// Prefix of every cluster id (and so of every namespace, /etc/netns dir and workdir).
pub(crate) const PREFIX: &str = "mrdt";
pub(crate) const RUN_NETNS: &str = "/run/netns";
pub(crate) const ETC_NETNS: &str = "/etc/netns";
/// The system Python: the `python3` on PATH may be a pyenv shim.
pub(crate) const PYTHON: &str = "/usr/bin/python3";
/// How long a service may take to print `ready` (generous: CI runs many clusters at once on
/// two cores; normally it takes ~0.1 s).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long dnsmasq may take to answer the first lookup.
const DNS_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long Drop waits for killed processes to leave a namespace.
const KILL_TIMEOUT: Duration = Duration::from_secs(3);
/// Set to keep the workdir (service logs, dnsmasq query log) after the cluster drops.
const KEEP_ENV: &str = "MIRRORD_TESTS_KEEP_WORKDIR";

/// Serialises `ip netns add/del` within this process: the first `netns add` on a machine sets
/// up the shared `/run/netns` mount, and concurrent first calls can stack mounts.
pub(crate) static NETNS_LOCK: Mutex<()> = Mutex::new(());
/// Per-process cluster counter (second part of the id).
pub(crate) static COUNTER: AtomicU32 = AtomicU32::new(0);
/// The stale sweep runs once per test process, before its first cluster exists.
pub(crate) static SWEEP: Once = Once::new();

/// Process groups of live (not yet reaped) [`ManagedChild`]ren of one cluster.
type Registry = Arc<Mutex<HashSet<u32>>>;

/// One member namespace on the bridge.
struct Member<'a> {
    role: &'static str,
    ns: &'a str,
    ip: Ipv4Addr,
    prefix: u8,
    /// The other cluster range, routed on-link over the bridge.
    other_range: &'static str,
}

/// A running simulated cluster; see the module docs. Dropping it tears everything down.
pub struct Cluster {
    id: String,
    ns_br: String,
    ns_pod: String,
    ns_svc: String,
    ns_dns: String,
    ns_client: String,
    ns_dev: String,
    /// Namespaces whose creation was attempted: what Drop removes.
    created: Vec<String>,
    /// `/etc/netns/<ns>` dirs written: what Drop removes.
    etc_dirs: Vec<PathBuf>,
    workdir: PathBuf,
    registry: Registry,
    /// dnsmasq, the pod's HTTP server, payment-service (in this order).
    services: Vec<ManagedChild>,
    pod_pid: u32,
    spawn_seq: AtomicU32,
    bulk_sha: OnceLock<String>,
}

impl Cluster {
    /// A variable in the pod process's environment (and nowhere else).
    pub const POD_ENV_NAME: &'static str = "POD_GREETING";
    pub const POD_ENV_VALUE: &'static str = "hello from the pod";
    /// The target pod's address.
    pub const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
    /// The client namespace's address (sends traffic to the pod).
    pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 20);
    /// payment-service's address.
    pub const SVC_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
    /// The cluster DNS server (dnsmasq).
    pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    /// What `kubernetes.default.svc.cluster.local` resolves to (nothing listens there).
    pub const KUBE_API_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
    /// Pod network.
    pub const POD_CIDR: &'static str = "10.244.0.0/16";
    /// Service network.
    pub const SVC_CIDR: &'static str = "10.96.0.0/12";

    /// The pod's HTTP port.
    pub const POD_HTTP_PORT: u16 = 80;
    /// payment-service's HTTP port.
    pub const SVC_HTTP_PORT: u16 = 8080;
    /// A port of payment-service where nothing listens (connecting is refused).
    pub const SVC_CLOSED_PORT: u16 = 8081;
    /// payment-service's TCP echo port.
    pub const SVC_TCP_ECHO_PORT: u16 = 9000;
    /// payment-service's UDP echo port.
    pub const SVC_UDP_ECHO_PORT: u16 = 9001;

    /// The service's short name and its Kubernetes namespace.
    pub const SVC_NAME: &'static str = "payment-service";
    pub const SVC_K8S_NAMESPACE: &'static str = "payments";
    pub const SVC_FQDN: &'static str = "payment-service.payments.svc.cluster.local";
    /// Another name of payment-service's address.
    pub const ECHO_FQDN: &'static str = "echo.payments.svc.cluster.local";
    /// The pod's DNS name.
    pub const POD_FQDN: &'static str = "10-244-0-10.payments.pod.cluster.local";

    /// The resolv.conf of every cluster namespace except dev (as in a pod of "payments").
    pub const RESOLV_CONF: &'static str = "nameserver 10.96.0.10\n\
        search payments.svc.cluster.local svc.cluster.local cluster.local\n\
        options ndots:5\n";

    /// Size of the blob payment-service serves at `GET /bytes`.
    pub const BULK_SIZE: u64 = 100 * 1024 * 1024;

    /// Builds a fresh cluster with unique namespace names and returns once every service
    /// answers (readiness lines and a real DNS lookup, no fixed sleeps).
    pub fn start() -> Result<Cluster> {
        preflight()?;
        SWEEP.call_once(sweep_stale);

        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}-{}", base36(std::process::id()), base36(n));
        let ns = |role: &str| format!("{id}-{role}");
        let mut cluster = Cluster {
            ns_br: ns("br"),
            ns_pod: ns("pod"),
            ns_svc: ns("svc"),
            ns_dns: ns("dns"),
            ns_client: ns("client"),
            ns_dev: ns("dev"),
            workdir: scratch_root().join(&id),
            id,
            created: Vec::new(),
            etc_dirs: Vec::new(),
            registry: Registry::default(),
            services: Vec::new(),
            pod_pid: 0,
            spawn_seq: AtomicU32::new(0),
            bulk_sha: OnceLock::new(),
        };
        // From here on an error drops `cluster`, which removes whatever was made.
        fs::create_dir_all(cluster.workdir.join("logs"))
            .with_context(|| format!("creating {}", cluster.workdir.display()))?;
        cluster
            .build_network()
            .with_context(|| format!("building the network of cluster {}", cluster.id))?;
        cluster
            .start_services()
            .with_context(|| format!("starting the services of cluster {}", cluster.id))?;
        Ok(cluster)
    }

    /// The unique id every name of this cluster carries.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The target pod's namespace.
    pub fn ns_pod(&self) -> &str {
        &self.ns_pod
    }
    /// payment-service's namespace.
    pub fn ns_svc(&self) -> &str {
        &self.ns_svc
    }
    /// The cluster DNS server's namespace.
    pub fn ns_dns(&self) -> &str {
        &self.ns_dns
    }
    /// The namespace that sends traffic to the pod.
    pub fn ns_client(&self) -> &str {
        &self.ns_client
    }
    /// The developer's machine (loopback only).
    pub fn ns_dev(&self) -> &str {
        &self.ns_dev
    }
    /// The namespace holding the bridge.
    pub fn ns_bridge(&self) -> &str {
        &self.ns_br
    }
    /// Every namespace of this cluster.
    pub fn namespaces(&self) -> [&str; 6] {
        [
            &self.ns_br,
            &self.ns_pod,
            &self.ns_svc,
            &self.ns_dns,
            &self.ns_client,
            &self.ns_dev,
        ]
    }

    /// PID of the pod's main HTTP server process: the target for `pid/PID`.
    pub fn pod_pid(&self) -> u32 {
        self.pod_pid
    }

    /// Per-cluster scratch dir (removed on drop unless `MIRRORD_TESTS_KEEP_WORKDIR` is set).
    /// Service logs are in `logs/`.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// `program` run inside namespace `ns` through `ip netns exec` (which also bind-mounts
    /// `/etc/netns/<ns>/resolv.conf`). `ip` execs `program` directly, so the spawned child's
    /// pid is `program`'s pid. Add arguments, env and stdio as usual.
    pub fn cmd(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(ip_bin());
        cmd.arg("netns").arg("exec").arg(ns).arg(program);
        cmd
    }
    /// [`Cluster::cmd`] in the dev namespace (the developer's machine).
    pub fn dev(&self, program: impl AsRef<OsStr>) -> Command {
        self.cmd(&self.ns_dev, program)
    }
    /// [`Cluster::cmd`] in the client namespace.
    pub fn client(&self, program: impl AsRef<OsStr>) -> Command {
        self.cmd(&self.ns_client, program)
    }
    /// [`Cluster::cmd`] in the pod namespace (next to the target, not inside its process).
    pub fn pod(&self, program: impl AsRef<OsStr>) -> Command {
        self.cmd(&self.ns_pod, program)
    }

    /// Spawns `program args` in namespace `ns` as a [`ManagedChild`] (see [`Cluster::spawn`]).
    pub fn spawn_in<I, S>(
        &self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: I,
    ) -> Result<ManagedChild>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.cmd(ns, program);
        cmd.args(args);
        self.spawn(cmd)
    }

    /// Spawns a long-running `cmd` (usually from [`Cluster::cmd`]/[`Cluster::dev`]) in its own
    /// process group. stdin is /dev/null; stdout and stderr are read by threads (so the child
    /// never blocks on a full pipe), kept for [`ManagedChild::wait_line`] /
    /// [`ManagedChild::wait_stderr_line`] and copied to `logs/` in the workdir. The process
    /// group is killed when the returned guard or the cluster drops.
    ///
    /// A `cmd` not made by [`Cluster::cmd`] runs in the root namespace: it must never talk to
    /// a cluster address (see the safety rule in the module docs).
    pub fn spawn(&self, cmd: Command) -> Result<ManagedChild> {
        // For `ip netns exec NS PROGRAM ...` name it after PROGRAM.
        let mut args = cmd.get_args();
        let program = match args.next() {
            Some(a) if cmd.get_program() == ip_bin().as_os_str() && a == "netns" => {
                args.nth(2).unwrap_or(cmd.get_program())
            }
            _ => cmd.get_program(),
        };
        let name = Path::new(program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "child".into());
        self.spawn_named(&name, cmd)
    }

    /// [`Cluster::spawn`] with an explicit name for the log files.
    pub fn spawn_named(&self, name: &str, mut cmd: Command) -> Result<ManagedChild> {
        let seq = self.spawn_seq.fetch_add(1, Ordering::Relaxed);
        let logs = self.workdir.join("logs");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // Registered under the lock so that Drop never sees a half-registered child.
        let mut registry = lock(&self.registry);
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let pid = child.id();
        registry.insert(pid);
        drop(registry);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let stdout_log = logs.join(format!("{seq:02}-{name}.stdout"));
        let stderr_log = logs.join(format!("{seq:02}-{name}.stderr"));
        Ok(ManagedChild {
            name: name.to_string(),
            child,
            exited: None,
            stdout: Mutex::new(stdout.map(|r| tee_lines(r, Some(&stdout_log)))),
            stderr: Mutex::new(stderr.map(|r| tee_lines(r, Some(&stderr_log)))),
            stdout_seen: Vec::new(),
            stderr_seen: Vec::new(),
            stderr_log,
            registry: self.registry.clone(),
        })
    }

    /// Makes sure the bulk blob exists (it is created lazily: 100 MiB takes ~0.4 s) and
    /// returns its sha256 (hex).
    pub fn ensure_bulk(&self) -> Result<String> {
        if let Some(sha) = self.bulk_sha.get() {
            return Ok(sha.clone());
        }
        // Same generator as the service uses on first request (services/bulk.py, flock'ed).
        let out = run_ok(
            Command::new(PYTHON)
                .arg("-B")
                .arg(services_dir().join("bulk.py"))
                .arg(self.bulk_path()),
        )?;
        let sha = out.trim().to_string();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("bulk.py printed {out:?}, not a sha256");
        }
        let size = fs::metadata(self.bulk_path())?.len();
        if size != Self::BULK_SIZE {
            bail!("bulk blob has {size} bytes, expected {}", Self::BULK_SIZE);
        }
        Ok(self.bulk_sha.get_or_init(|| sha).clone())
    }

    /// sha256 (hex) of the blob payment-service serves at `GET /bytes` ([`Self::BULK_SIZE`]
    /// bytes); creates the blob if needed.
    ///
    /// # Panics
    /// When the blob cannot be created (see [`Cluster::ensure_bulk`] for a `Result`).
    pub fn bulk_sha256(&self) -> String {
        match self.ensure_bulk() {
            Ok(sha) => sha,
            Err(e) => panic!("creating the bulk blob failed: {e:#}"),
        }
    }

    /// Where the bulk blob lives (it may not exist before [`Cluster::ensure_bulk`] or the first
    /// `GET /bytes`).
    pub fn bulk_path(&self) -> PathBuf {
        self.workdir.join("bulk.bin")
    }

    /// The requests the pod's HTTP server has answered, as `METHOD PATH` lines, oldest first.
    pub fn pod_requests(&self) -> Vec<String> {
        fs::read_to_string(self.workdir.join("pod_requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// dnsmasq's log (it logs every query: `query[A] name from 10.244.0.10`, ...).
    pub fn dns_log(&self) -> String {
        self.services
            .first()
            .map(|dns| fs::read_to_string(&dns.stderr_log).unwrap_or_default())
            .unwrap_or_default()
    }

    fn build_network(&mut self) -> Result<()> {
        let all: Vec<String> = self.namespaces().iter().map(|s| s.to_string()).collect();
        {
            let _guard = lock(&NETNS_LOCK);
            self.created.extend(all.iter().cloned());
            ip_batch(None, all.iter().map(|ns| format!("netns add {ns}")), false)?;
        }

        let members = [
            Member {
                role: "pod",
                ns: &self.ns_pod,
                ip: Self::POD_IP,
                prefix: 16,
                other_range: Self::SVC_CIDR,
            },
            Member {
                role: "client",
                ns: &self.ns_client,
                ip: Self::CLIENT_IP,
                prefix: 16,
                other_range: Self::SVC_CIDR,
            },
            Member {
                role: "svc",
                ns: &self.ns_svc,
                ip: Self::SVC_IP,
                prefix: 12,
                other_range: Self::POD_CIDR,
            },
            Member {
                role: "dns",
                ns: &self.ns_dns,
                ip: Self::DNS_IP,
                prefix: 12,
                other_range: Self::POD_CIDR,
            },
        ];

        // Veths are created from inside the bridge namespace straight into the member: their
        // names never exist in the root namespace, so they cannot clash across clusters.
        let mut bridge = vec![
            "link set lo up".to_string(),
            "link add br0 type bridge".to_string(),
            "link set br0 up".to_string(),
        ];
        for m in &members {
            bridge.push(format!(
                "link add v-{} type veth peer name eth0 netns {}",
                m.role, m.ns
            ));
            bridge.push(format!("link set v-{} master br0 up", m.role));
        }
        ip_batch(Some(&self.ns_br), bridge, false)?;

        for m in &members {
            ip_batch(
                Some(m.ns),
                [
                    "link set lo up".to_string(),
                    format!("addr add {}/{} dev eth0", m.ip, m.prefix),
                    "link set eth0 up".to_string(),
                    format!("route add {} dev eth0", m.other_range),
                ],
                false,
            )?;
        }
        ip_batch(Some(&self.ns_dev), ["link set lo up".to_string()], false)?;
        // The client makes thousands of new connections to the one pod address a minute (the
        // benchmark's new-connection figures). Each leaves a TIME_WAIT behind for 60 s, and with
        // the default range `connect` soon scans thousands of such ports per call (measured:
        // ~4 ms each after ~14,000 connections), which would time the port search instead of
        // the path. The whole range is what a busy client pod gets with this (namespaced)
        // sysctl.
        let range = self
            .client(find_program("sysctl")?)
            .args(["-qw", "net.ipv4.ip_local_port_range=1024 65535"])
            .status()
            .context("running sysctl in the client namespace")?;
        if !range.success() {
            bail!("sysctl ip_local_port_range in the client namespace: {range}");
        }

        for ns in [
            &self.ns_br,
            &self.ns_pod,
            &self.ns_svc,
            &self.ns_dns,
            &self.ns_client,
        ] {
            let dir = Path::new(ETC_NETNS).join(ns);
            self.etc_dirs.push(dir.clone());
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::write(dir.join("resolv.conf"), Self::RESOLV_CONF)
                .with_context(|| format!("writing {}/resolv.conf", dir.display()))?;
        }
        Ok(())
    }

    fn start_services(&mut self) -> Result<()> {
        let conf = self.workdir.join("dnsmasq.conf");
        fs::write(&conf, self.dnsmasq_conf()).context("writing dnsmasq.conf")?;
        let mut dnsmasq = self.cmd(&self.ns_dns, find_program("dnsmasq")?);
        dnsmasq.arg("--keep-in-foreground").arg(format!(
            "--conf-file={}",
            conf.to_str().context("non-UTF-8 workdir")?
        ));
        let mut dns = self.spawn_named("dnsmasq", dnsmasq)?;

        let mut pod_cmd = self.cmd(&self.ns_pod, PYTHON);
        pod_cmd
            .arg("-B")
            .arg(services_dir().join("pod_http.py"))
            .arg("--port")
            .arg(Self::POD_HTTP_PORT.to_string())
            .arg("--log")
            .arg(self.workdir.join("pod_requests.log"))
            // A variable only the pod's process has, as a container's environment would: tests
            // of `feature.env` look for it in a program launched with mirrord.
            .env(Self::POD_ENV_NAME, Self::POD_ENV_VALUE);
        let mut pod = self.spawn_named("pod-http", pod_cmd)?;

        let mut svc_cmd = self.cmd(&self.ns_svc, PYTHON);
        svc_cmd
            .arg("-B")
            .arg(services_dir().join("svc.py"))
            .arg("--http-port")
            .arg(Self::SVC_HTTP_PORT.to_string())
            .arg("--tcp-echo-port")
            .arg(Self::SVC_TCP_ECHO_PORT.to_string())
            .arg("--udp-echo-port")
            .arg(Self::SVC_UDP_ECHO_PORT.to_string())
            .arg("--bulk")
            .arg(self.bulk_path());
        let mut svc = self.spawn_named("payment-service", svc_cmd)?;

        // The three start in parallel; on an error the guards drop and kill them.
        pod.wait_line("ready", READY_TIMEOUT)
            .context("pod HTTP server")?;
        svc.wait_line("ready", READY_TIMEOUT)
            .context("payment-service")?;
        self.pod_pid = pod.pid();
        let pod_netns = netns_id(&Path::new(RUN_NETNS).join(&self.ns_pod))?;
        let pid_netns = netns_id(Path::new(&format!("/proc/{}/ns/net", self.pod_pid)))?;
        if pod_netns != pid_netns {
            bail!("pod pid {} is not in {}", self.pod_pid, self.ns_pod);
        }
        self.wait_dns(&mut dns)?;
        self.services = vec![dns, pod, svc];
        Ok(())
    }

    /// Polls a real lookup from the pod (through resolv.conf, the search list and the bridge)
    /// until dnsmasq answers.
    fn wait_dns(&self, dns: &mut ManagedChild) -> Result<()> {
        let deadline = Instant::now() + DNS_READY_TIMEOUT;
        loop {
            if let Some(status) = dns.try_wait()? {
                bail!("dnsmasq exited ({status}): {}", dns.stderr_tail(20));
            }
            let out = self
                .pod("getent")
                .args(["hosts", Self::SVC_NAME])
                // One short try per poll: the loop does the retrying.
                .env("RES_OPTIONS", "timeout:1 attempts:1")
                .output()
                .context("running getent in the pod namespace")?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && stdout.contains(&Self::SVC_IP.to_string()) {
                return Ok(());
            }
            let last = format!("{}: {stdout}", out.status);
            if Instant::now() >= deadline {
                bail!(
                    "dnsmasq did not resolve {} within {DNS_READY_TIMEOUT:?} (last getent: \
                     {last}); dnsmasq log: {}",
                    Self::SVC_NAME,
                    dns.stderr_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn dnsmasq_conf(&self) -> String {
        let pid_file = self.workdir.join("dnsmasq.pid");
        format!(
            "# Generated by mirrord-tests for cluster {id}.\n\
             # Only this file: no /etc/resolv.conf, no /etc/hosts, no upstream servers.\n\
             no-resolv\n\
             no-hosts\n\
             no-poll\n\
             bind-interfaces\n\
             listen-address={dns}\n\
             pid-file={pid}\n\
             log-facility=-\n\
             log-queries\n\
             host-record={svc_fqdn},{svc}\n\
             host-record={echo_fqdn},{svc}\n\
             host-record=kubernetes.default.svc.cluster.local,{kube}\n\
             host-record={pod_fqdn},{pod}\n\
             # Authoritative for everything: any name not above (in cluster.local or not)\n\
             # is NXDOMAIN. Without it, names outside cluster.local get REFUSED (no\n\
             # upstream), which glibc reports as EAI_AGAIN, not EAI_NONAME.\n\
             address=/#/\n\
             # Never forward reverse lookups of private ranges (there is nothing to forward\n\
             # to anyway): NXDOMAIN unless a host-record gives the PTR.\n\
             bogus-priv\n\
             domain-needed\n",
            id = self.id,
            dns = Self::DNS_IP,
            pid = pid_file.display(),
            svc_fqdn = Self::SVC_FQDN,
            echo_fqdn = Self::ECHO_FQDN,
            pod_fqdn = Self::POD_FQDN,
            svc = Self::SVC_IP,
            kube = Self::KUBE_API_IP,
            pod = Self::POD_IP,
        )
    }
}

impl Drop for Cluster {
    /// Kills every process of the cluster and removes its namespaces, /etc/netns dirs and
    /// workdir. Never panics: failures are reported on stderr.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in &self.services {
                eprintln!(
                    "[cluster {}] {} stderr (tail):\n{}",
                    self.id,
                    s.name,
                    s.stderr_tail(30)
                );
            }
        }
        self.services.clear();
        {
            let registry = lock(&self.registry);
            for &pgid in registry.iter() {
                kill_group(pgid);
            }
        }
        for ns in &self.created {
            if let Err(e) = kill_netns_procs(ns) {
                eprintln!("[cluster {}] killing processes in {ns}: {e:#}", self.id);
            }
        }
        {
            let _guard = lock(&NETNS_LOCK);
            let existing: Vec<&String> = self
                .created
                .iter()
                .filter(|ns| Path::new(RUN_NETNS).join(ns).exists())
                .collect();
            if !existing.is_empty() {
                if let Err(e) = ip_batch(
                    None,
                    existing.iter().map(|ns| format!("netns del {ns}")),
                    true,
                ) {
                    eprintln!("[cluster {}] deleting namespaces: {e:#}", self.id);
                }
            }
        }
        for dir in &self.etc_dirs {
            if let Err(e) = fs::remove_dir_all(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("[cluster {}] removing {}: {e}", self.id, dir.display());
                }
            }
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("[cluster {}] kept {}", self.id, self.workdir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.workdir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "[cluster {}] removing {}: {e}",
                    self.id,
                    self.workdir.display()
                );
            }
        }
    }
}

// Tests share a cluster between threads (e.g. `std::thread::scope` load generators).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Cluster>();
    send_sync::<ManagedChild>();
};

/// A process started by [`Cluster::spawn`]: its process group is killed (SIGKILL) and reaped
/// when this guard drops.
pub struct ManagedChild {
    name: String,
    child: Child,
    /// Set once reaped: the pid may then be reused, so it is never signalled again.
    exited: Option<ExitStatus>,
    // Mutex only to make the guard (and so the Cluster) Sync; access is through &mut self.
    stdout: Mutex<Option<Receiver<String>>>,
    stderr: Mutex<Option<Receiver<String>>>,
    stdout_seen: Vec<String>,
    stderr_seen: Vec<String>,
    stderr_log: PathBuf,
    registry: Registry,
}

impl ManagedChild {
    /// The child's pid (that of `program`: `ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name used for its log files.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until a stdout line contains `needle` and returns that line.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let rx = lock(&self.stdout);
        let rx = rx.as_ref().context("stdout is not captured")?;
        wait_line_on(rx, needle, timeout, &mut self.stdout_seen).with_context(|| {
            format!(
                "{} (pid {}) stdout; stderr tail: {}",
                self.name,
                self.child.id(),
                tail_of_file(&self.stderr_log, 20)
            )
        })
    }

    /// Waits until a stderr line contains `needle` and returns that line.
    pub fn wait_stderr_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let rx = lock(&self.stderr);
        let rx = rx.as_ref().context("stderr is not captured")?;
        wait_line_on(rx, needle, timeout, &mut self.stderr_seen)
            .with_context(|| format!("{} (pid {}) stderr", self.name, self.child.id()))
    }

    /// Every stdout line received so far (including those already returned).
    pub fn stdout_lines(&mut self) -> &[String] {
        if let Some(rx) = lock(&self.stdout).as_ref() {
            self.stdout_seen.extend(rx.try_iter());
        }
        &self.stdout_seen
    }

    /// Every stdout line, once the child has closed its stdout (for a child that has exited, so
    /// that no line still in flight from the reader thread is missed).
    pub fn stdout_to_end(&mut self, timeout: Duration) -> Result<&[String]> {
        let deadline = Instant::now() + timeout;
        if let Some(rx) = lock(&self.stdout).as_ref() {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => self.stdout_seen.push(line),
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        bail!("{}: stdout still open after {timeout:?}", self.name)
                    }
                }
            }
        }
        Ok(&self.stdout_seen)
    }

    /// Every stderr line received so far.
    pub fn stderr_lines(&mut self) -> &[String] {
        if let Some(rx) = lock(&self.stderr).as_ref() {
            self.stderr_seen.extend(rx.try_iter());
        }
        &self.stderr_seen
    }

    /// The last `n` lines of its stderr log file.
    pub fn stderr_tail(&self, n: usize) -> String {
        tail_of_file(&self.stderr_log, n)
    }

    /// Non-blocking check whether it exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().context("waitpid")?;
            if self.exited.is_some() {
                lock(&self.registry).remove(&self.child.id());
            }
        }
        Ok(self.exited)
    }

    /// Waits up to `timeout` for it to exit (polls every 10 ms).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to its process group, if not reaped yet.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pgid = i32::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(-pgid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// Kills its process group (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        let mut registry = lock(&self.registry);
        if let Some(status) = self.exited {
            return Ok(status);
        }
        if let Some(status) = self.child.try_wait().context("waitpid")? {
            // Already exited; its group (if any member is left) dies with the namespaces.
            registry.remove(&self.child.id());
            self.exited = Some(status);
            return Ok(status);
        }
        kill_group(self.child.id());
        let status = self.child.wait().context("waitpid")?;
        registry.remove(&self.child.id());
        self.exited = Some(status);
        Ok(status)
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("killing {} (pid {}): {e:#}", self.name, self.child.id());
        }
    }
}

fn tail_of_file(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Locks ignoring poison: a panicking test must not stop the cleanup.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        if pgid > 1 {
            // SAFETY: kill(2) has no memory-safety preconditions; pgid > 1 so this never
            // means "every process" (-1) or our own group (0).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

pub(crate) fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// The pid of the process that created a harness name (`mrdt<pid36>-...`), if it is one.
pub(crate) fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let pid = rest.split('-').next()?;
    u32::from_str_radix(pid, 36).ok()
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub(crate) fn scratch_root() -> PathBuf {
    std::env::temp_dir().join("mirrord-tests")
}

pub(crate) fn services_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("services")
}

/// Removes what dead test processes left behind: namespaces (and the processes still in
/// them), /etc/netns dirs and workdirs whose creator pid is gone. Names carrying our own pid
/// are stale too: this runs before this process made any cluster (a dead process with the same
/// pid left them).
pub(crate) fn sweep_stale() {
    let me = std::process::id();
    let stale = |name: &str| creator_pid(name).is_some_and(|pid| pid == me || !pid_alive(pid));
    let names = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| stale(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaces = names(Path::new(RUN_NETNS));
    for ns in &namespaces {
        if let Err(e) = kill_netns_procs(ns) {
            eprintln!("sweeping stale namespace {ns}: {e:#}");
        }
    }
    if !namespaces.is_empty() {
        let _guard = lock(&NETNS_LOCK);
        if let Err(e) = ip_batch(
            None,
            namespaces.iter().map(|ns| format!("netns del {ns}")),
            true,
        ) {
            eprintln!("sweeping stale namespaces: {e:#}");
        }
    }
    for root in [PathBuf::from(ETC_NETNS), scratch_root()] {
        for name in names(&root) {
            let _ = fs::remove_dir_all(root.join(name));
        }
    }
}

/// (device, inode) of a network namespace file: equal ids mean the same namespace.
pub(crate) fn netns_id(path: &Path) -> Result<(u64, u64)> {
    let m = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok((m.dev(), m.ino()))
}

/// Pids of the processes (other than this one) whose network namespace is `ns`: what
/// `ip netns pids` prints, without a process per call.
pub(crate) fn netns_pids(ns: &str) -> Result<Vec<u32>> {
    let target = netns_id(&Path::new(RUN_NETNS).join(ns))?;
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Processes exit while we look, and zombies have no namespace: skip errors.
        if netns_id(&entry.path().join("ns/net")).ok() == Some(target) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// SIGKILLs every process in `ns` until none is left (bounded by [`KILL_TIMEOUT`]).
pub(crate) fn kill_netns_procs(ns: &str) -> Result<()> {
    if !Path::new(RUN_NETNS).join(ns).exists() {
        return Ok(());
    }
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let pids = netns_pids(ns)?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in &pids {
            if let Ok(pid) = i32::try_from(*pid) {
                // SAFETY: kill(2) has no memory-safety preconditions; pid > 0 is one process.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if Instant::now() >= deadline {
            bail!("processes still in {ns} after {KILL_TIMEOUT:?}: {pids:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `ip [-n NS] [-force] -batch -` with `lines` on stdin: one process for many changes.
pub(crate) fn ip_batch<I>(ns: Option<&str>, lines: I, force: bool) -> Result<()>
where
    I: IntoIterator<Item = String>,
{
    let script: String = lines.into_iter().map(|l| l + "\n").collect();
    let mut cmd = Command::new(ip_bin());
    if let Some(ns) = ns {
        cmd.arg("-n").arg(ns);
    }
    if force {
        cmd.arg("-force");
    }
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    child
        .stdin
        .take()
        .context("ip stdin")?
        .write_all(script.as_bytes())
        .context("writing to ip -batch")?;
    let out = child.wait_with_output().context("waiting for ip")?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}) on:\n{script}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Absolute path of a system program (PATH of a test run may lack the sbin dirs).
pub(crate) fn find_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "{name} not found: the simulated cluster needs iproute2, dnsmasq-base, curl \
                 and python3 (apt-get install -y iproute2 dnsmasq-base curl python3)"
            )
        })
}

pub(crate) fn ip_bin() -> &'static Path {
    static IP: OnceLock<PathBuf> = OnceLock::new();
    IP.get_or_init(|| find_program("ip").unwrap_or_else(|_| PathBuf::from("ip")))
}

/// Fails early, with the fix in the message, when the machine cannot host a cluster.
pub(crate) fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the simulated cluster needs root (network namespaces, bridges): run the tests as root"
        );
    }
    find_program("ip")?;
    find_program("dnsmasq")?;
    find_program("getent")?;
    if !Path::new(PYTHON).is_file() {
        bail!("{PYTHON} not found: apt-get install -y python3");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_encode_the_creator_pid() {
        for pid in [1, 35, 36, 4_194_304, u32::MAX] {
            let name = format!("{PREFIX}{}-{}-client", base36(pid), base36(7));
            assert_eq!(creator_pid(&name), Some(pid), "{name}");
        }
        assert_eq!(creator_pid("other-ns"), None);
        assert_eq!(creator_pid("mrdt-pod"), None);
    }
}
