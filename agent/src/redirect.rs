//! Port redirects for incoming traffic (mirror and steal): the lifecycle of one agent's NAT rules
//! in the network namespace the agent lives in.
//!
//! # Rules
//!
//! Every agent owns rules that no other agent touches, so several agents can share a target:
//!
//! - **iptables** (nft or legacy flavour, IPv4 and, when it works, IPv6): one chain
//!   `MIRRORD_<id>` in the `nat` table, reached from two jumps inserted at the top of the built-in
//!   chains:
//!   ```text
//!   -A PREROUTING -p tcp -m addrtype --dst-type LOCAL -j MIRRORD_<id>
//!   -A OUTPUT -p tcp -m addrtype --dst-type LOCAL -m mark ! --mark 0x6d726464 -j MIRRORD_<id>
//!   -A MIRRORD_<id> -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8080
//!   ```
//!   PREROUTING catches connections from other hosts, OUTPUT those of the pod's own processes to
//!   the pod's own addresses (loopback included). Only local destinations are redirected, so a
//!   namespace that routes traffic for others (a host-network target) keeps forwarding it.
//!   Sockets of the agent carry [`AGENT_MARK`] ([`mark_socket`]), so the agent's own connections
//!   to the pod's ports (mirror pass-through, unmatched steal requests) are never redirected.
//! - **nft**: a table `inet mirrord_<id>` with base chains `prerouting` and `output` (type nat,
//!   priority dstnat - 1, i.e. just before iptables' nat chains and the usual nft ones) jumping,
//!   under the same conditions, to a regular chain `ports` holding one
//!   `tcp dport P redirect to :T` rule per port. One `inet` table serves IPv4 and IPv6.
//!
//! The agent's id names its chain/table (`MIRRORD_<id>`, `mirrord_<id>`), and every lookup of
//! "our" objects compares names exactly, never by prefix: agent `ab` never touches `MIRRORD_abc`.
//! Ids are 1 to 20 characters from `[A-Za-z0-9_-]` (iptables chain names stop at 28 characters).
//!
//! # Backend
//!
//! [`detect_backend`] picks, in this order:
//! 1. **nft** when `nft` is installed and the namespace has an nft table with a `nat` base chain
//!    that iptables-nft did not create (iptables-nft's tables are `ip`/`ip6` tables named
//!    `nat`, `filter`, `mangle`, `raw` or `security`): e.g. kube-proxy's nftables mode, firewalld,
//!    or another mirrord agent on nft;
//! 2. **iptables-legacy** when `iptables-legacy-save`/`ip6tables-legacy-save` show rules and
//!    `iptables-nft-save`/`ip6tables-nft-save` show none (the namespace is managed by legacy
//!    iptables; adding nft-flavoured rules there would be evaluated in an order nobody expects);
//! 3. otherwise whatever `iptables` is (`iptables -V`: `nf_tables` or `legacy`); `nft` when there
//!    is no iptables at all.
//!
//! # Processes
//!
//! Every rule change runs `iptables`/`nft` with an argument vector (no shell), with `-w` so
//! concurrent agents wait for the xtables lock instead of failing, and errors carry the command
//! line and its stderr. The calls block for a few milliseconds each: call them from
//! `spawn_blocking` (or accept the short stall) in async code. The methods of one [`Redirector`]
//! are serialized by a lock.
//!
//! # Lifetime
//!
//! [`Redirector::cleanup`] removes the rules on an orderly exit. [`spawn_guard`] covers every
//! other exit, SIGKILL included: see the `guard` module.

mod exec;
mod guard;
mod iptables;
mod nft;

pub use guard::{spawn_guard, GuardHandle, GUARD_LOG_ENV};

use anyhow::{bail, Context, Result};
use std::fmt;
use std::os::fd::RawFd;
use std::sync::Mutex;

use exec::Program;
use iptables::{Flavour, Iptables};
use nft::Nft;

/// fwmark the agent puts on its own sockets (`SO_MARK`, see [`mark_socket`]) so its connections to
/// the pod's ports are never redirected ("mrdd").
pub const AGENT_MARK: u32 = 0x6d72_6464;

/// Longest agent id: `MIRRORD_` (8) + id must fit iptables' 28-character chain names.
pub const MAX_ID_LEN: usize = 20;

/// Which tool manages the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-nft` / `ip6tables-nft` (iptables syntax, nf_tables in the kernel).
    IptablesNft,
    /// `iptables-legacy` / `ip6tables-legacy` (x_tables in the kernel).
    IptablesLegacy,
    /// `nft`, with a table of our own in the `inet` family.
    Nft,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::IptablesNft => "iptables-nft",
            Backend::IptablesLegacy => "iptables-legacy",
            Backend::Nft => "nft",
        })
    }
}

impl std::str::FromStr for Backend {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Backend> {
        Ok(match s {
            "iptables-nft" => Backend::IptablesNft,
            "iptables-legacy" => Backend::IptablesLegacy,
            "nft" => Backend::Nft,
            other => {
                bail!("unknown redirect backend {other:?} (iptables-nft, iptables-legacy, nft)")
            }
        })
    }
}

/// Checks an agent id: 1 to [`MAX_ID_LEN`] characters from `[A-Za-z0-9_-]`.
pub fn validate_id(agent_id: &str) -> Result<()> {
    if agent_id.is_empty() || agent_id.len() > MAX_ID_LEN {
        bail!(
            "agent id {agent_id:?} must have 1 to {MAX_ID_LEN} characters (iptables chain names \
             are limited to 28)"
        );
    }
    if let Some(c) = agent_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        bail!(
            "agent id {agent_id:?} contains {c:?}; only letters, digits, '_' and '-' are allowed"
        );
    }
    Ok(())
}

/// The iptables chain of `agent_id` (`MIRRORD_<id>`).
pub fn chain_name(agent_id: &str) -> Result<String> {
    validate_id(agent_id)?;
    Ok(format!("MIRRORD_{agent_id}"))
}

/// The nft table (family `inet`) of `agent_id` (`mirrord_<id>`).
pub fn nft_table_name(agent_id: &str) -> Result<String> {
    validate_id(agent_id)?;
    Ok(format!("mirrord_{agent_id}"))
}

/// Redirect rules of ONE agent, in the network namespace of the thread that created it (the
/// commands it runs inherit that thread's namespace).
pub struct Redirector {
    agent_id: String,
    backend: Backend,
    imp: Imp,
    /// Serializes rule changes: each is a read-modify-write of the agent's chain.
    lock: Mutex<()>,
}

enum Imp {
    Iptables {
        chain: String,
        v4: Iptables,
        /// `None` when ip6tables is missing or does not work here (no IPv6 in the pod).
        v6: Option<Iptables>,
    },
    Nft {
        nft: Nft,
    },
}

impl Redirector {
    /// Detects the backend the namespace uses ([`detect_backend`]), creates this agent's own
    /// chains (taking over leftovers of the same id) and hooks them into nat PREROUTING and nat
    /// OUTPUT. Nothing is redirected yet.
    pub fn new(agent_id: &str) -> Result<Redirector> {
        validate_id(agent_id)?;
        let backend = detect_backend().context("choosing the iptables/nft backend")?;
        Redirector::with_backend(agent_id, backend)
    }

    /// Like [`Redirector::new`] with a backend chosen by the caller.
    pub fn with_backend(agent_id: &str, backend: Backend) -> Result<Redirector> {
        validate_id(agent_id)?;
        let imp = match backend {
            Backend::Nft => {
                let program = Program::find("nft").context("the nft backend needs `nft`")?;
                let nft = Nft::new(program, nft_table_name(agent_id)?);
                nft.setup()?;
                Imp::Nft { nft }
            }
            Backend::IptablesNft | Backend::IptablesLegacy => {
                let flavour = if backend == Backend::IptablesNft {
                    Flavour::Nft
                } else {
                    Flavour::Legacy
                };
                let chain = chain_name(agent_id)?;
                let v4 = Iptables::find(false, flavour)?;
                v4.setup(&chain)?;
                let v6 = match Iptables::find(true, flavour) {
                    Ok(v6) => match v6.setup(&chain) {
                        Ok(()) => Some(v6),
                        Err(e) => {
                            tracing::warn!("IPv6 ports will not be redirected: {e:#}");
                            // Whatever part of the setup worked must not stay behind.
                            let _ = v6.cleanup(&chain);
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!("IPv6 ports will not be redirected: {e:#}");
                        None
                    }
                };
                Imp::Iptables { chain, v4, v6 }
            }
        };
        tracing::debug!(agent_id, %backend, "redirect chains ready");
        Ok(Redirector {
            agent_id: agent_id.to_owned(),
            backend,
            imp,
            lock: Mutex::new(()),
        })
    }

    /// Redirects TCP connections arriving for `port` on any local address to `to_port` (where the
    /// agent listens): from other hosts (PREROUTING) and from the pod's own processes to the pod's
    /// own addresses (OUTPUT), except sockets carrying [`AGENT_MARK`]. Idempotent per port;
    /// replaces a previous `to_port` of that port (the new rule is in place before the old one
    /// goes, so no connection misses both).
    ///
    /// Connections redirected in OUTPUT arrive at the loopback address (127.0.0.1 / ::1), those
    /// from PREROUTING at the address they were sent to: listen on the wildcard address.
    pub fn add(&self, port: u16, to_port: u16) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match &self.imp {
            Imp::Iptables { chain, v4, v6 } => {
                v4.add(chain, port, to_port)?;
                if let Some(v6) = v6 {
                    if let Err(e) = v6.add(chain, port, to_port) {
                        tracing::warn!(port, "IPv6 redirect not added: {e:#}");
                    }
                }
            }
            Imp::Nft { nft } => nft.add(port, to_port)?,
        }
        Ok(())
    }

    /// Stops redirecting `port`. Removing a port that is not redirected is not an error.
    pub fn remove(&self, port: u16) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match &self.imp {
            Imp::Iptables { chain, v4, v6 } => {
                v4.remove(chain, port)?;
                if let Some(v6) = v6 {
                    if let Err(e) = v6.remove(chain, port) {
                        tracing::warn!(port, "IPv6 redirect not removed: {e:#}");
                    }
                }
            }
            Imp::Nft { nft } => nft.remove(port)?,
        }
        Ok(())
    }

    /// The redirected ports and where they go, as the rules say (sorted by port).
    pub fn ports(&self) -> Result<Vec<(u16, u16)>> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut ports = match &self.imp {
            Imp::Iptables { chain, v4, .. } => v4.ports(chain)?,
            Imp::Nft { nft } => nft.ports()?,
        };
        ports.sort_unstable();
        ports.dedup();
        Ok(ports)
    }

    /// Removes this agent's rules and chains, and only this agent's. Safe to call twice; after it
    /// the redirector has nothing left to change (`add` fails).
    pub fn cleanup(&self) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match &self.imp {
            Imp::Iptables { chain, v4, v6 } => {
                let r4 = v4.cleanup(chain);
                let r6 = v6.as_ref().map_or(Ok(()), |v6| v6.cleanup(chain));
                r4.and(r6)
            }
            Imp::Nft { nft } => nft.cleanup(),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether IPv6 connections are redirected too (to the same `to_port`, at `[::1]` or the
    /// pod's IPv6 address: a listener bound to `0.0.0.0` does not get them). False when
    /// ip6tables is missing or failed here; the nft backend's `inet` table covers both families.
    pub fn ipv6(&self) -> bool {
        match &self.imp {
            Imp::Iptables { v6, .. } => v6.is_some(),
            Imp::Nft { .. } => true,
        }
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }
}

/// Removes `agent_id`'s rules in the current network namespace without a [`Redirector`] (the
/// guard's job): its iptables chain and the jumps to it in every iptables flavour installed
/// (nft and legacy, IPv4 and IPv6), and its nft table. Nothing of another id is touched. Finding
/// nothing is success, and so is a tool that cannot list anything here (no nf_tables, no IPv6).
pub fn cleanup_agent(agent_id: &str) -> Result<()> {
    let chain = chain_name(agent_id)?;
    let mut errors = Vec::new();
    for ipt in Iptables::all_installed() {
        if let Err(e) = ipt.cleanup_if_listable(&chain) {
            errors.push(format!("{e:#}"));
        }
    }
    if let Some(program) = Program::find("nft") {
        if let Err(e) = Nft::new(program, nft_table_name(agent_id)?).cleanup_if_listable() {
            errors.push(format!("{e:#}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!(
            "removing the rules of agent {agent_id}: {}",
            errors.join("; ")
        )
    }
}

/// Ids of every agent that has rules in the current network namespace: `MIRRORD_<id>` chains
/// of every iptables flavour installed, and `inet mirrord_<id>` nft tables. A tool that cannot
/// list anything here (no nf_tables, no IPv6) contributes nothing.
pub fn agents_with_rules() -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for ipt in Iptables::all_installed() {
        match ipt.nat_table() {
            Ok(Some(table)) => ids.extend(
                table
                    .chains
                    .iter()
                    .filter_map(|c| c.strip_prefix("MIRRORD_"))
                    .map(str::to_owned),
            ),
            Ok(None) => {}
            Err(e) => tracing::debug!("{e:#}"),
        }
    }
    if let Some(program) = Program::find("nft") {
        match program.run(&exec::args(["list", "tables"])) {
            Ok(out) => ids.extend(
                nft::parse_tables(&out)
                    .into_iter()
                    .filter(|(family, _)| family == "inet")
                    .filter_map(|(_, name)| name.strip_prefix("mirrord_").map(str::to_owned)),
            ),
            Err(e) => tracing::debug!("{e:#}"),
        }
    }
    ids.retain(|id| validate_id(id).is_ok());
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Puts [`AGENT_MARK`] on a socket (`SO_MARK`, needs `CAP_NET_ADMIN`), before it connects, so the
/// connection is not redirected back to the agent.
pub fn mark_socket(fd: RawFd) -> std::io::Result<()> {
    let mark: libc::c_uint = AGENT_MARK;
    // SAFETY: setsockopt reads exactly `size_of::<c_uint>()` bytes from a live local.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            &mark as *const libc::c_uint as *const libc::c_void,
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What [`detect_backend`] looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BackendFacts {
    /// `nft` is installed and works.
    pub nft_usable: bool,
    /// nft tables with a nat base chain that iptables-nft did not create (`family name`).
    pub foreign_nft_nat_tables: Vec<String>,
    /// Some `-A` rule in `iptables-legacy-save` or `ip6tables-legacy-save`.
    pub legacy_has_rules: bool,
    /// Some `-A` rule in `iptables-nft-save` or `ip6tables-nft-save`.
    pub nft_iptables_has_rules: bool,
    /// What plain `iptables` is, if installed.
    pub default_iptables: Option<Backend>,
}

/// The backend rule (see the module documentation), as a pure function of what was observed.
pub fn decide_backend(facts: &BackendFacts) -> Result<Backend> {
    if facts.nft_usable && !facts.foreign_nft_nat_tables.is_empty() {
        return Ok(Backend::Nft);
    }
    if facts.legacy_has_rules && !facts.nft_iptables_has_rules {
        return Ok(Backend::IptablesLegacy);
    }
    if let Some(b) = facts.default_iptables {
        return Ok(b);
    }
    if facts.nft_usable {
        return Ok(Backend::Nft);
    }
    bail!("neither iptables nor nft is installed (apt-get install -y iptables nftables)")
}

/// Looks at the current namespace (see [`BackendFacts`]).
pub fn backend_facts() -> BackendFacts {
    let mut facts = BackendFacts::default();
    if let Some(program) = Program::find("nft") {
        match nft::foreign_nat_tables(&program) {
            Ok(tables) => {
                facts.nft_usable = true;
                facts.foreign_nft_nat_tables = tables;
            }
            Err(e) => tracing::debug!("nft is not usable here: {e:#}"),
        }
    }
    for ipt in Iptables::all_installed() {
        let has_rules = match ipt.has_rules() {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("{e:#}");
                false
            }
        };
        match ipt.flavour() {
            Flavour::Legacy => facts.legacy_has_rules |= has_rules,
            Flavour::Nft => facts.nft_iptables_has_rules |= has_rules,
        }
    }
    facts.default_iptables = iptables::default_flavour().map(|f| match f {
        Flavour::Nft => Backend::IptablesNft,
        Flavour::Legacy => Backend::IptablesLegacy,
    });
    facts
}

/// Chooses the backend for the current namespace (rule in the module documentation).
/// `MIRRORD_AGENT_REDIRECT_BACKEND` (`iptables-nft`, `iptables-legacy`, `nft`) overrides it.
pub fn detect_backend() -> Result<Backend> {
    if let Ok(forced) = std::env::var(BACKEND_ENV) {
        if !forced.is_empty() {
            return forced.parse();
        }
    }
    let facts = backend_facts();
    let backend = decide_backend(&facts)?;
    tracing::debug!(?facts, %backend, "redirect backend");
    Ok(backend)
}

/// Environment variable that forces the backend instead of detecting it.
pub const BACKEND_ENV: &str = "MIRRORD_AGENT_REDIRECT_BACKEND";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert_eq!(chain_name("3fa9c1d2").unwrap(), "MIRRORD_3fa9c1d2");
        assert_eq!(nft_table_name("a-b_C9").unwrap(), "mirrord_a-b_C9");
        let longest = "x".repeat(MAX_ID_LEN);
        assert_eq!(chain_name(&longest).unwrap().len(), 28);
        assert!(chain_name(&"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(chain_name("").is_err());
        for bad in ["a b", "a/b", "a;b", "ä", "a\n", "$(x)", "a*"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn backend_names_round_trip() {
        for b in [Backend::IptablesNft, Backend::IptablesLegacy, Backend::Nft] {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
        }
        assert!("iptables".parse::<Backend>().is_err());
    }

    #[test]
    fn backend_rule() {
        let base = BackendFacts {
            nft_usable: true,
            default_iptables: Some(Backend::IptablesNft),
            ..Default::default()
        };
        assert_eq!(decide_backend(&base).unwrap(), Backend::IptablesNft);

        let foreign = BackendFacts {
            foreign_nft_nat_tables: vec!["ip kube-proxy".into()],
            ..base.clone()
        };
        assert_eq!(decide_backend(&foreign).unwrap(), Backend::Nft);
        // Foreign tables but no working nft: stay with iptables.
        let no_nft = BackendFacts {
            nft_usable: false,
            ..foreign.clone()
        };
        assert_eq!(decide_backend(&no_nft).unwrap(), Backend::IptablesNft);

        let legacy = BackendFacts {
            legacy_has_rules: true,
            ..base.clone()
        };
        assert_eq!(decide_backend(&legacy).unwrap(), Backend::IptablesLegacy);
        // Rules on both sides: the system's iptables decides.
        let both = BackendFacts {
            nft_iptables_has_rules: true,
            ..legacy.clone()
        };
        assert_eq!(decide_backend(&both).unwrap(), Backend::IptablesNft);
        let legacy_default = BackendFacts {
            default_iptables: Some(Backend::IptablesLegacy),
            ..base.clone()
        };
        assert_eq!(
            decide_backend(&legacy_default).unwrap(),
            Backend::IptablesLegacy
        );

        let only_nft = BackendFacts {
            nft_usable: true,
            ..Default::default()
        };
        assert_eq!(decide_backend(&only_nft).unwrap(), Backend::Nft);
        assert!(decide_backend(&BackendFacts::default()).is_err());
    }

    #[test]
    fn mark_socket_sets_so_mark() {
        use std::os::fd::AsRawFd;
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        match mark_socket(s.as_raw_fd()) {
            Ok(()) => {
                let mut v: libc::c_uint = 0;
                let mut len = std::mem::size_of::<libc::c_uint>() as libc::socklen_t;
                // SAFETY: getsockopt writes at most `len` bytes into `v`.
                let r = unsafe {
                    libc::getsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_MARK,
                        &mut v as *mut libc::c_uint as *mut libc::c_void,
                        &mut len,
                    )
                };
                assert_eq!(r, 0);
                assert_eq!(v, AGENT_MARK);
            }
            // Without CAP_NET_ADMIN the kernel refuses; that is the only acceptable failure.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
        }
        assert!(mark_socket(-1).is_err());
    }
}
