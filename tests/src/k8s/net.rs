//! The network and cgroups under the simulated API: a bridge namespace, the developer's
//! namespace (loopback only), the client and DNS namespaces, one namespace per pod, and one
//! cgroup (v2) per container.
//!
//! Safety rule (see `crate::cluster`): no namespace gets a default route; pods only have
//! on-link routes for the cluster ranges over the bridge, and dev has loopback only.

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::{
    creator_pid, ip_batch, ip_bin, kill_netns_procs, lock, pid_alive, ETC_NETNS, NETNS_LOCK,
    RUN_NETNS,
};

/// Where cgroup v2 is mounted on these machines (hybrid layout).
pub(crate) const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
/// Prefix of this simulator's cgroup trees: `mirrord-sim-<cluster id>`.
const CGROUP_PREFIX: &str = "mirrord-sim-";
/// The cluster DNS server (dnsmasq).
pub(crate) const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The client namespace's address (sends traffic to pods).
pub(crate) const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
pub(crate) const POD_CIDR: &str = "10.244.0.0/16";
pub(crate) const SVC_CIDR: &str = "10.96.0.0/12";
const KILL_TIMEOUT: Duration = Duration::from_secs(3);

/// The namespaces and cgroups of one simulated cluster.
pub(crate) struct Network {
    pub id: String,
    pub ns_br: String,
    pub ns_dev: String,
    pub ns_client: String,
    pub ns_dns: String,
    /// Namespaces whose creation was attempted: what teardown removes.
    created: Mutex<Vec<String>>,
    next_pod: AtomicU32,
    next_svc: AtomicU32,
    cgroup_root: PathBuf,
}

/// A pod's place on the network.
#[derive(Clone, Debug)]
pub(crate) struct PodNet {
    /// The network namespace (`ip netns` name).
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl Network {
    pub fn new(id: &str) -> Network {
        let ns = |role: &str| format!("{id}-{role}");
        Network {
            id: id.to_string(),
            ns_br: ns("br"),
            ns_dev: ns("dev"),
            ns_client: ns("client"),
            ns_dns: ns("dns"),
            created: Mutex::new(Vec::new()),
            next_pod: AtomicU32::new(0),
            next_svc: AtomicU32::new(0),
            cgroup_root: Path::new(CGROUP2_ROOT).join(format!("{CGROUP_PREFIX}{id}")),
        }
    }

    /// Creates the bridge, dev, client and DNS namespaces and the cgroup root.
    pub fn build(&self) -> Result<()> {
        let fixed = [&self.ns_br, &self.ns_dev, &self.ns_client, &self.ns_dns];
        self.add_namespaces(fixed.iter().map(|s| s.to_string()).collect())?;
        ip_batch(
            Some(&self.ns_br),
            [
                "link set lo up".to_string(),
                "link add br0 type bridge".to_string(),
                "link set br0 up".to_string(),
            ],
            false,
        )?;
        ip_batch(Some(&self.ns_dev), ["link set lo up".to_string()], false)?;
        self.attach(&self.ns_client, "vc", CLIENT_IP, 16, SVC_CIDR)?;
        self.attach(&self.ns_dns, "vd", DNS_IP, 12, POD_CIDR)?;
        for ns in [&self.ns_client, &self.ns_dns] {
            self.write_resolv_conf(ns, "default")?;
        }
        fs::create_dir_all(&self.cgroup_root)
            .with_context(|| format!("creating {}", self.cgroup_root.display()))?;
        Ok(())
    }

    fn add_namespaces(&self, names: Vec<String>) -> Result<()> {
        let _guard = lock(&NETNS_LOCK);
        lock(&self.created).extend(names.iter().cloned());
        ip_batch(
            None,
            names.iter().map(|ns| format!("netns add {ns}")),
            false,
        )
    }

    /// Plugs namespace `ns` into the bridge through a veth (`port` on the bridge side, `eth0`
    /// inside) with address `ip/prefix` and an on-link route for `other_range`.
    fn attach(
        &self,
        ns: &str,
        port: &str,
        ip: Ipv4Addr,
        prefix: u8,
        other_range: &str,
    ) -> Result<()> {
        // Created from inside the bridge namespace straight into the member: the names never
        // exist in the root namespace, so they cannot clash across clusters.
        ip_batch(
            Some(&self.ns_br),
            [
                format!("link add {port} type veth peer name eth0 netns {ns}"),
                format!("link set {port} master br0 up"),
            ],
            false,
        )?;
        ip_batch(
            Some(ns),
            [
                "link set lo up".to_string(),
                format!("addr add {ip}/{prefix} dev eth0"),
                "link set eth0 up".to_string(),
                format!("route add {other_range} dev eth0"),
            ],
            false,
        )
    }

    /// `/etc/netns/<ns>/resolv.conf` as in a pod of Kubernetes namespace `k8s_ns`.
    fn write_resolv_conf(&self, ns: &str, k8s_ns: &str) -> Result<()> {
        let dir = Path::new(ETC_NETNS).join(ns);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("resolv.conf"), resolv_conf(k8s_ns))
            .with_context(|| format!("writing {}/resolv.conf", dir.display()))
    }

    /// A new pod namespace on the bridge with its own address, resolving as a pod of `k8s_ns`.
    pub fn add_pod(&self, k8s_ns: &str) -> Result<PodNet> {
        let n = self.next_pod.fetch_add(1, Ordering::Relaxed);
        // 10.244.0.10 .. 10.244.0.209, 10.244.1.10 ...: never the client's .2.
        let third = u8::try_from(n / 200).context("too many pods")?;
        let fourth = u8::try_from(10 + n % 200).context("pod address")?;
        let ip = Ipv4Addr::new(10, 244, third, fourth);
        let netns = format!("{}-p{n}", self.id);
        self.add_namespaces(vec![netns.clone()])?;
        self.attach(&netns, &format!("vp{n}"), ip, 16, SVC_CIDR)?;
        self.write_resolv_conf(&netns, k8s_ns)?;
        Ok(PodNet { netns, ip })
    }

    /// A fresh service ClusterIP for services created through the API (10.96.1.1, .2, ...;
    /// the fixtures' services have fixed addresses in 10.96.0.0/24).
    pub fn alloc_cluster_ip(&self) -> Ipv4Addr {
        let n = self.next_svc.fetch_add(1, Ordering::Relaxed);
        Ipv4Addr::new(10, 96, 1 + (n / 250) as u8, 1 + (n % 250) as u8)
    }

    /// Makes the pod in `netns` answer on `ip` too (a service ClusterIP backed by that pod:
    /// the simulation has no kube-proxy).
    pub fn add_address(&self, netns: &str, ip: Ipv4Addr) -> Result<()> {
        ip_batch(Some(netns), [format!("addr add {ip}/32 dev eth0")], false)
    }

    /// Kills whatever runs in a pod namespace and deletes it.
    pub fn remove_pod(&self, netns: &str) -> Result<()> {
        kill_netns_procs(netns)?;
        {
            let _guard = lock(&NETNS_LOCK);
            if Path::new(RUN_NETNS).join(netns).exists() {
                ip_batch(None, [format!("netns del {netns}")], true)?;
            }
        }
        lock(&self.created).retain(|n| n != netns);
        let _ = fs::remove_dir_all(Path::new(ETC_NETNS).join(netns));
        Ok(())
    }

    /// `program` run inside namespace `ns` through `ip netns exec` (which bind-mounts its
    /// resolv.conf).
    pub fn cmd(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(ip_bin());
        cmd.arg("netns").arg("exec").arg(ns).arg(program);
        cmd
    }

    /// The cgroup of a container: `<root>/<pod uid>/<container id>` (created).
    pub fn container_cgroup(&self, pod_uid: &str, container_id: &str) -> Result<PathBuf> {
        let dir = self.cgroup_root.join(pod_uid).join(container_id);
        fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(dir)
    }

    /// Kills every process in the cgroups of a pod (all its containers) and removes them.
    pub fn remove_pod_cgroups(&self, pod_uid: &str) {
        remove_cgroup_tree(&self.cgroup_root.join(pod_uid));
    }

    /// Removes everything: processes, namespaces, resolv.conf dirs, cgroups. Never fails:
    /// problems are reported on stderr.
    pub fn teardown(&self) {
        remove_cgroup_tree(&self.cgroup_root);
        let created = std::mem::take(&mut *lock(&self.created));
        for ns in &created {
            if let Err(e) = kill_netns_procs(ns) {
                eprintln!("[k8s-sim {}] killing processes in {ns}: {e:#}", self.id);
            }
        }
        {
            let _guard = lock(&NETNS_LOCK);
            let existing: Vec<&String> = created
                .iter()
                .filter(|ns| Path::new(RUN_NETNS).join(ns).exists())
                .collect();
            if !existing.is_empty() {
                if let Err(e) = ip_batch(
                    None,
                    existing.iter().map(|ns| format!("netns del {ns}")),
                    true,
                ) {
                    eprintln!("[k8s-sim {}] deleting namespaces: {e:#}", self.id);
                }
            }
        }
        for ns in &created {
            let _ = fs::remove_dir_all(Path::new(ETC_NETNS).join(ns));
        }
    }
}

/// The resolv.conf of a pod in Kubernetes namespace `k8s_ns`.
pub(crate) fn resolv_conf(k8s_ns: &str) -> String {
    format!(
        "nameserver {DNS_IP}\nsearch {k8s_ns}.svc.cluster.local svc.cluster.local cluster.local\n\
         options ndots:5\n"
    )
}

/// Runs `f` on a fresh thread that has entered network namespace `netns`: sockets made there
/// stay in that namespace for good, whichever thread uses them later.
pub(crate) fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let path = Path::new(RUN_NETNS).join(netns);
    let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let thread = std::thread::Builder::new()
        .name("k8s-sim-netns".into())
        .spawn(move || -> std::io::Result<T> {
            // SAFETY: setns(2) on a valid fd; it only changes this (short-lived) thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            f()
        })
        .context("spawning a thread")?;
    match thread.join() {
        Ok(r) => r.with_context(|| format!("inside network namespace {netns}")),
        Err(_) => bail!("thread inside {netns} panicked"),
    }
}

/// Kills every process in cgroup `dir` (cgroup.kill, then waits until it is empty).
fn kill_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + KILL_TIMEOUT;
    while Instant::now() < deadline {
        match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(s) if !s.trim().is_empty() => std::thread::sleep(Duration::from_millis(5)),
            _ => return,
        }
    }
    eprintln!(
        "[k8s-sim] processes still in {} after {KILL_TIMEOUT:?}",
        dir.display()
    );
}

/// Kills every process below `dir` and removes the cgroups, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    // cgroup.kill covers the whole subtree.
    kill_cgroup(dir);
    fn rmdir_all(dir: &Path) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_all(&e.path());
                }
            }
        }
        // A cgroup dir is removed with rmdir (its files are virtual); it can take a moment
        // after the kill for the last process to be reaped.
        let deadline = Instant::now() + KILL_TIMEOUT;
        while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    rmdir_all(dir);
}

/// Removes cgroup trees left by dead simulator processes (namespaces, /etc/netns dirs and
/// workdirs are swept by `cluster::sweep_stale`).
pub(crate) fn sweep_stale_cgroups() {
    let me = std::process::id();
    let Ok(rd) = fs::read_dir(CGROUP2_ROOT) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix(CGROUP_PREFIX) else {
            continue;
        };
        if creator_pid(id).is_some_and(|pid| pid == me || !pid_alive(pid)) {
            remove_cgroup_tree(&e.path());
        }
    }
}
