//! Targets on this machine (`pid/PID`, `netns/NAME`): how to enter their network namespace and
//! where their resolver configuration lives.

use anyhow::{bail, Context, Result};
use mirrord_protocol::config::TargetPath;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub struct Target {
    path: TargetPath,
    netns: File,
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
    pub fn open(spec: &str) -> Result<Target> {
        let path = TargetPath::parse(spec).map_err(anyhow::Error::msg)?;
        let ns_file = match &path {
            TargetPath::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            TargetPath::Netns(name) => PathBuf::from(format!("/var/run/netns/{name}")),
            other => bail!(
                "the agent on this machine serves local targets (pid/PID, netns/NAME), not {other}"
            ),
        };
        let netns = File::open(&ns_file)
            .with_context(|| format!("target {path}: cannot open {}", ns_file.display()))?;
        Ok(Target { path, netns })
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
        let (root_candidates, hosts_candidates) = match &self.path {
            TargetPath::Pid(pid) => (
                vec![PathBuf::from(format!("/proc/{pid}/root/etc/resolv.conf"))],
                vec![PathBuf::from(format!("/proc/{pid}/root/etc/hosts"))],
            ),
            TargetPath::Netns(name) => (
                vec![
                    PathBuf::from(format!("/etc/netns/{name}/resolv.conf")),
                    PathBuf::from("/etc/resolv.conf"),
                ],
                vec![
                    PathBuf::from(format!("/etc/netns/{name}/hosts")),
                    PathBuf::from("/etc/hosts"),
                ],
            ),
            _ => unreachable!("Target::open only accepts local targets"),
        };
        let (resolv_conf, origin) = read(&root_candidates)?;
        let (hosts, _) = read(&hosts_candidates)?;
        Ok(ResolverFiles {
            resolv_conf,
            hosts,
            origin,
        })
    }

    /// Moves the calling thread into the target's network namespace. Must run before any other
    /// thread exists, so that every thread the agent starts afterwards inherits it.
    pub fn enter(&self) -> Result<()> {
        nix::sched::setns(&self.netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into the network namespace of {}", self.path))?;
        Ok(())
    }
}
