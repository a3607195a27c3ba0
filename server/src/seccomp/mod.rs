//! Syscall interception for what the layer cannot see: programs that make their own system
//! calls (Go), statically linked programs (no `LD_PRELOAD`), and resolvers that read
//! `/etc/resolv.conf` and `/etc/hosts` themselves.
//!
//! `mirrord exec` installs a seccomp filter in the program's process just before `exec`
//! ([`filter`]); the kernel then stops every `connect`, `getpeername` and `open`/`openat` of the
//! program and of everything it starts, and the session's [`supervisor`] decides: a connect to a
//! cluster address is made by the supervisor on the program's own socket (taken with
//! `pidfd_getfd`) through the session's existing data listeners and UDP relays ([`link`]), an
//! open of the resolver files gets a memfd holding the target's version
//! (`SECCOMP_IOCTL_NOTIF_ADDFD`), everything else continues untouched.

mod addr;
mod filter;
mod link;
mod notify;
mod supervisor;

pub use link::SessionLink;
pub use supervisor::{Supervisor, TargetFiles};

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// Set to `0` to launch programs without the filter (the layer alone, as before).
pub use mirrord_protocol::config::SECCOMP_ENV as DISABLE_ENV;
/// Where the program's layer finds the mark (16 hex digits).
pub use mirrord_protocol::config::SECCOMP_MARK_ENV as MARK_ENV;

/// A filter ready to go into the next spawned program.
pub struct Prepared {
    mark: u64,
    filter: Arc<Vec<libc::sock_filter>>,
    handover: filter::Handover,
}

/// What came of the install, after the program started.
pub enum Outcome {
    Supervised(OwnedFd),
    /// The program runs without interception; the message says why and what it means.
    Unavailable(String),
}

impl Prepared {
    /// `None` when interception is switched off ([`DISABLE_ENV`]) or cannot be prepared.
    pub fn new() -> Option<Prepared> {
        if std::env::var(DISABLE_ENV).is_ok_and(|v| v == "0") {
            return None;
        }
        let handover = filter::handover()
            .map_err(|e| tracing::warn!("seccomp: no socketpair: {e}"))
            .ok()?;
        let mark = filter::new_mark()
            .map_err(|e| tracing::warn!("seccomp: no random mark: {e}"))
            .ok()?;
        Some(Prepared {
            mark,
            filter: Arc::new(filter::program(mark)),
            handover,
        })
    }

    /// The value of [`MARK_ENV`] for the program: calls with this mark in `args[5]` pass.
    pub fn mark(&self) -> String {
        format!("{:016x}", self.mark)
    }

    /// Makes `command` install the filter in its child just before `exec`.
    pub fn arm(&self, command: &mut tokio::process::Command) {
        let filter = self.filter.clone();
        let child_end = self.handover.child.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (prctl, seccomp, sendmsg, close) on data built before fork.
        unsafe {
            command.pre_exec(move || {
                filter::install_in_child(&filter, child_end);
                Ok(())
            });
        }
    }

    /// After `spawn` returned (the child has run `pre_exec` and `exec`).
    pub fn outcome(self) -> Outcome {
        // The session's copy of the child's end goes first, so a child that died before
        // sending reads as "missing" rather than waiting.
        drop(self.handover.child);
        match filter::receive(&self.handover.session) {
            filter::Installed::Listener(fd) => Outcome::Supervised(fd),
            filter::Installed::Refused(errno) => Outcome::Unavailable(format!(
                "the kernel refused the seccomp filter ({}); Go programs, static binaries and \
                 resolvers that read /etc/resolv.conf themselves use this machine's network",
                std::io::Error::from_raw_os_error(errno)
            )),
            filter::Installed::Missing => {
                Outcome::Unavailable("the program did not report its seccomp filter".into())
            }
        }
    }
}

/// Serves the program's intercepted calls on a thread of its own until it and all its
/// descendants are gone. The supervisor stays readable (its [`Supervisor::stopped_calls`]).
pub fn supervise(listener: OwnedFd, supervisor: Arc<Supervisor>) {
    let spawned = std::thread::Builder::new()
        .name("mirrord-seccomp".into())
        .spawn(move || supervisor.serve(listener));
    if let Err(e) = spawned {
        // Dropping the listener makes the program's watched calls fail with ENOSYS; there is no
        // taking the filter back.
        tracing::error!("seccomp: no supervisor thread: {e}");
    }
}
