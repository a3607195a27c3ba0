//! What the agent serves: a process (`pid/PID`, or a container found by its id), a named network
//! namespace (`netns/NAME`), the namespace it already lives in (an ephemeral container of the
//! target pod), or nothing at all (targetless). For each: how to enter its network namespace and
//! where its resolver configuration lives.

use anyhow::{bail, Context, Result};
use mirrord_protocol::config::TargetPath;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub struct Target {
    /// For messages.
    what: String,
    /// The namespace to enter; `None` when the agent already lives where it serves.
    netns: Option<File>,
    resolver: ResolverSource,
    targetless: bool,
}

/// Where the target's `/etc/resolv.conf` and `/etc/hosts` are read from.
enum ResolverSource {
    /// The process's own root: `/proc/PID/root/etc/...`.
    Process(u32),
    /// What `ip netns exec` bind-mounts: `/etc/netns/NAME/...`, else the host's.
    Netns(String),
    /// The agent's own `/etc` (targetless; an ephemeral container shares its pod's files).
    Own,
}

/// The target's `/etc/resolv.conf` and `/etc/hosts`, read once at start-up.
pub struct ResolverFiles {
    pub resolv_conf: String,
    pub hosts: String,
    pub origin: PathBuf,
}

impl ResolverFiles {
    /// The first `nameserver` line: where DNS datagrams of the program go.
    pub fn first_nameserver(&self) -> Option<SocketAddr> {
        self.resolv_conf.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
    }
}

impl Target {
    /// A local target (`pid/PID`, `netns/NAME`) or `targetless`.
    pub fn open(spec: &str) -> Result<Target> {
        let path = TargetPath::parse(spec).map_err(anyhow::Error::msg)?;
        match &path {
            TargetPath::Pid(pid) => Self::process(*pid, path.to_string()),
            TargetPath::Netns(name) => {
                let ns_file = PathBuf::from(format!("/var/run/netns/{name}"));
                let netns = File::open(&ns_file)
                    .with_context(|| format!("target {path}: cannot open {}", ns_file.display()))?;
                Ok(Target {
                    what: path.to_string(),
                    netns: Some(netns),
                    resolver: ResolverSource::Netns(name.clone()),
                    targetless: false,
                })
            }
            TargetPath::Targetless => Ok(Target {
                what: "targetless".into(),
                netns: None,
                resolver: ResolverSource::Own,
                targetless: true,
            }),
            other => bail!(
                "the agent takes pid/PID, netns/NAME or targetless (with --container-id for a \
                 container), not {other}; the server resolves Kubernetes targets"
            ),
        }
    }

    /// The container whose id is `id` (`containerd://ID`, `cri-o://ID`, `docker://ID` or the
    /// bare id): its first process, found through `/proc/*/cgroup`.
    pub fn container(id: &str) -> Result<Target> {
        let pid = find_container_process(Path::new("/proc"), id)?;
        Self::process(pid, format!("container {id} (pid {pid})"))
    }

    /// The namespace the agent already lives in: an ephemeral container of the target pod. The
    /// target container's process, when found, still provides the resolver files (they are the
    /// pod's anyway).
    pub fn in_place(container_id: Option<&str>) -> Target {
        let resolver = container_id
            .and_then(|id| find_container_process(Path::new("/proc"), id).ok())
            .map(ResolverSource::Process)
            .unwrap_or(ResolverSource::Own);
        Target {
            what: "the pod this agent runs in".into(),
            netns: None,
            resolver,
            targetless: false,
        }
    }

    fn process(pid: u32, what: String) -> Result<Target> {
        let ns_file = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let netns = File::open(&ns_file)
            .with_context(|| format!("target {what}: cannot open {}", ns_file.display()))?;
        Ok(Target {
            what,
            netns: Some(netns),
            resolver: ResolverSource::Process(pid),
            targetless: false,
        })
    }

    pub fn is_targetless(&self) -> bool {
        self.targetless
    }

    /// The target's process, whose environment the program may get (`feature.env`); `None` for
    /// a named namespace, targetless, or an ephemeral agent whose container was not found.
    pub fn process_pid(&self) -> Option<u32> {
        match self.resolver {
            ResolverSource::Process(pid) => Some(pid),
            ResolverSource::Netns(_) | ResolverSource::Own => None,
        }
    }

    /// Files of the target's own view of `/etc`: through `/proc/PID/root` for a process, and
    /// `/etc/netns/NAME/` (what `ip netns exec` bind-mounts) for a named namespace.
    pub fn resolver_files(&self) -> Result<ResolverFiles> {
        let read = |candidates: &[PathBuf]| -> Result<(String, PathBuf)> {
            for c in candidates {
                match std::fs::read_to_string(c) {
                    Ok(s) => return Ok((s, c.clone())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).with_context(|| format!("reading {}", c.display())),
                }
            }
            Ok((String::new(), candidates[0].clone()))
        };
        let (root_candidates, hosts_candidates) = match &self.resolver {
            ResolverSource::Process(pid) => (
                vec![PathBuf::from(format!("/proc/{pid}/root/etc/resolv.conf"))],
                vec![PathBuf::from(format!("/proc/{pid}/root/etc/hosts"))],
            ),
            ResolverSource::Netns(name) => (
                vec![
                    PathBuf::from(format!("/etc/netns/{name}/resolv.conf")),
                    PathBuf::from("/etc/resolv.conf"),
                ],
                vec![
                    PathBuf::from(format!("/etc/netns/{name}/hosts")),
                    PathBuf::from("/etc/hosts"),
                ],
            ),
            ResolverSource::Own => (
                vec![PathBuf::from("/etc/resolv.conf")],
                vec![PathBuf::from("/etc/hosts")],
            ),
        };
        let (resolv_conf, origin) = read(&root_candidates)?;
        let (hosts, _) = read(&hosts_candidates)?;
        Ok(ResolverFiles {
            resolv_conf,
            hosts,
            origin,
        })
    }

    /// Moves the calling thread into the target's network namespace (if it has one to enter).
    /// Must run before any other thread exists, so that every thread the agent starts
    /// afterwards inherits it.
    pub fn enter(&self) -> Result<()> {
        if let Some(netns) = &self.netns {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into the network namespace of {}", self.what))?;
        }
        Ok(())
    }
}

/// The bare id of a `runtime://id` container id.
fn bare_container_id(id: &str) -> &str {
    id.rsplit_once("://").map(|(_, bare)| bare).unwrap_or(id)
}

/// The lowest PID whose cgroup path names the container `id`. Every runtime names the
/// container's cgroup after its id (`.../cri-containerd-ID.scope`, `.../docker/ID`,
/// `.../crio-ID.scope`), so no container-runtime socket is needed.
pub fn find_container_process(proc_root: &Path, id: &str) -> Result<u32> {
    let bare = bare_container_id(id);
    // A short or empty id could match unrelated cgroups by accident.
    if bare.len() < 12 || !bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("{id:?} is not a container id");
    }
    let mut pids: Vec<u32> = std::fs::read_dir(proc_root)
        .with_context(|| format!("listing {}", proc_root.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    pids.sort_unstable();
    for pid in pids {
        // Processes come and go while we look: an unreadable entry is simply not the one.
        let Ok(cgroup) = std::fs::read_to_string(proc_root.join(format!("{pid}/cgroup"))) else {
            continue;
        };
        if cgroup
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| {
                path.split('/')
                    .any(|segment| names_container(segment, bare))
            })
        {
            return Ok(pid);
        }
    }
    bail!(
        "no process of container {id} on this node (looked through {}/*/cgroup): the agent \
         must run on the target pod's node with hostPID",
        proc_root.display()
    )
}

/// Whether one cgroup path segment is the container's: `ID`, `PREFIX-ID` or `PREFIX-ID.scope`.
fn names_container(segment: &str, bare: &str) -> bool {
    let segment = segment.strip_suffix(".scope").unwrap_or(segment);
    segment == bare
        || segment
            .strip_suffix(bare)
            .is_some_and(|prefix| prefix.ends_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(entries: &[(u32, &str)]) -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        for (pid, cgroup) in entries {
            std::fs::create_dir_all(dir.0.join(pid.to_string())).unwrap();
            std::fs::write(dir.0.join(format!("{pid}/cgroup")), cgroup).unwrap();
        }
        dir
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let mut b = [0u8; 8];
                use std::io::Read;
                std::fs::File::open("/dev/urandom")
                    .unwrap()
                    .read_exact(&mut b)
                    .unwrap();
                let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
                let p = std::env::temp_dir().join(format!("agent-proc-{name}"));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const ID: &str = "4f1c2a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170605f4e3";

    #[test]
    fn finds_the_container_by_its_cgroup_for_every_runtime() {
        for (runtime, line) in [
            (
                "containerd",
                format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope\n"),
            ),
            (
                "docker",
                format!("12:memory:/docker/{ID}\n0::/docker/{ID}\n"),
            ),
            ("cri-o", format!("0::/kubepods.slice/crio-{ID}.scope\n")),
        ] {
            let proc = fake_proc(&[(1, "0::/init.scope\n"), (40, &line), (41, &line)]);
            let pid = find_container_process(&proc.0, &format!("{runtime}://{ID}")).unwrap();
            assert_eq!(pid, 40, "{runtime}");
        }
    }

    #[test]
    fn a_missing_or_bogus_container_says_why() {
        let proc = fake_proc(&[
            (1, "0::/init.scope\n"),
            (7, "0::/docker/abcdef0123456789\n"),
        ]);
        let e = find_container_process(&proc.0, &format!("containerd://{ID}")).unwrap_err();
        assert!(e.to_string().contains("hostPID"), "{e}");
        // A prefix of a real id is not that container.
        assert!(find_container_process(&proc.0, "docker://abcdef012345").is_err());
        assert!(find_container_process(&proc.0, "docker://").is_err());
        assert!(find_container_process(&proc.0, "docker://../..").is_err());
    }
}
