//! The guard: a process that outlives the agent just long enough to remove its rules.
//!
//! # Design
//!
//! [`spawn_guard`] **forks** the agent. It must run on the main thread after `setns` into the
//! target's namespace and before any other thread exists (it checks `/proc/self/status` and
//! refuses otherwise): the child is then a faithful single-threaded copy that may allocate, log
//! and spawn commands, and it is in the target's network (and the agent's mount) namespace, so
//! the `iptables`/`nft` it runs see the agent's rules.
//!
//! - **Lifeline**: a pipe. The guard keeps the read end, the agent the write end, opened
//!   `O_CLOEXEC` so no program the agent runs (iptables, nft) inherits it. When the agent dies
//!   — exit, panic, SIGKILL, OOM kill — the kernel closes the write end, the guard's `read`
//!   returns EOF, it runs [`cleanup_agent`](super::cleanup_agent) (a few retries, for the xtables
//!   lock or a concurrent change) and exits. An orderly agent also cleans up itself; the guard's
//!   second pass then finds nothing.
//! - **Nothing inherited**: the guard closes every descriptor it inherited except the lifeline
//!   and puts `/dev/null` on stdin/stdout/stderr, so the agent's sockets, its stdin lifeline and
//!   its stdout/stderr pipes see EOF exactly when the agent dies. Set `MIRRORD_AGENT_GUARD_LOG`
//!   to a file path to get the guard's stderr there instead.
//! - **Signals**: the guard calls `setsid` (new session and process group: a Ctrl-C or a signal
//!   to the session's process group does not reach it) and ignores SIGINT, SIGTERM, SIGHUP,
//!   SIGQUIT; these are blocked in the agent from before `fork` until the guard has set this up,
//!   so a signal racing with the start-up cannot kill the guard either. SIGKILL of the guard
//!   itself is not covered (nothing can be).
//! - **Start-up handshake**: `spawn_guard` returns once the guard reported, over a second pipe,
//!   that it is set up and closed that pipe (or fails after 5 s).
//!
//! The guard is a child of the agent; after the agent dies it is reparented (to init or a
//! subreaper) and reaped there. Caveat: if the agent is PID 1 of its PID namespace (a container
//! whose entrypoint is the agent), the kernel kills every process of that namespace with it,
//! guard included; run the agent under a parent process (an init such as `tini`) there.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Path of a file the guard appends its log to (otherwise its stderr is /dev/null).
pub const GUARD_LOG_ENV: &str = "MIRRORD_AGENT_GUARD_LOG";

/// How long `spawn_guard` waits for the guard to report that it is set up.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Signals the guard ignores.
const IGNORED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// The running guard. Dropping it does **not** stop the guard: the lifeline's write end stays
/// open (deliberately leaked) until the agent process ends, and only then does the guard clean
/// up and exit.
#[derive(Debug)]
pub struct GuardHandle {
    pid: u32,
    lifeline: Option<OwnedFd>,
}

impl GuardHandle {
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for GuardHandle {
    fn drop(&mut self) {
        if let Some(fd) = self.lifeline.take() {
            // Closing it would tell the guard the agent died: keep it open for the process's
            // lifetime.
            let _ = fd.into_raw_fd();
        }
    }
}

/// Starts the guard of `agent_id` (see the module documentation). Call it on the main thread,
/// after entering the target's network namespace, before any other thread exists.
pub fn spawn_guard(agent_id: &str) -> Result<GuardHandle> {
    super::validate_id(agent_id)?;
    if let Some(n) = thread_count() {
        if n > 1 {
            bail!(
                "the redirect guard must be started before any other thread exists (this process \
                 has {n} threads)"
            );
        }
    }
    let log_path = std::env::var_os(GUARD_LOG_ENV).filter(|p| !p.is_empty());
    let agent_id = agent_id.to_owned();
    let agent_pid = std::process::id();
    let (life_r, life_w) = pipe_cloexec().context("creating the guard's lifeline pipe")?;
    let (ready_r, ready_w) = pipe_cloexec().context("creating the guard's start-up pipe")?;

    let mut blocked = SigSet::empty();
    for s in IGNORED {
        blocked.add(s);
    }
    let mut old_mask = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut old_mask))
        .context("blocking signals around fork")?;
    // SAFETY: the process has a single thread (checked above), so the child is a complete copy
    // with no lock held by a thread that does not exist there; the child never returns from
    // `guard_main`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(life_w);
        drop(ready_r);
        guard_main(&agent_id, agent_pid, life_r, ready_w, log_path, &old_mask);
    }
    let fork_error = std::io::Error::last_os_error();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    drop(life_r);
    drop(ready_w);
    if pid < 0 {
        return Err(fork_error).context("forking the redirect guard");
    }
    match wait_ready(&ready_r) {
        Ok(()) => {
            tracing::debug!(guard_pid = pid, agent_id, "redirect guard running");
            Ok(GuardHandle {
                pid: pid as u32,
                lifeline: Some(life_w),
            })
        }
        Err(e) => {
            // SAFETY: plain syscalls on our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            Err(e)
        }
    }
}

/// Waits for the guard's "set up" byte and then for the end of the pipe (the guard closes its end
/// right after the byte), so that on return the guard holds nothing but its lifeline and stdio.
fn wait_ready(ready_r: &OwnedFd) -> Result<()> {
    let mut pfd = libc::pollfd {
        fd: ready_r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let mut got_ready = false;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            bail!("the redirect guard did not start within {READY_TIMEOUT:?}");
        }
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("waiting for the redirect guard");
        }
        if r == 0 {
            continue;
        }
        let mut b = [0u8; 8];
        // SAFETY: reads into a live buffer of the given length.
        let n = unsafe { libc::read(ready_r.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        match n {
            0 if got_ready => return Ok(()),
            0 => bail!("the redirect guard failed while starting"),
            n if n > 0 => got_ready |= b[..n as usize].contains(&1),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e).context("waiting for the redirect guard");
                }
            }
        }
    }
}

/// The guard process. Never returns.
fn guard_main(
    agent_id: &str,
    agent_pid: u32,
    life_r: OwnedFd,
    ready_w: OwnedFd,
    log_path: Option<OsString>,
    old_mask: &SigSet,
) -> ! {
    let body = std::panic::AssertUnwindSafe(|| {
        guard_body(agent_id, agent_pid, life_r, ready_w, log_path, old_mask)
    });
    let code = std::panic::catch_unwind(body).unwrap_or(101);
    // _exit: no atexit handlers, no flushing of buffers copied from the agent.
    // SAFETY: ends this process.
    unsafe { libc::_exit(code) }
}

fn guard_body(
    agent_id: &str,
    agent_pid: u32,
    life_r: OwnedFd,
    ready_w: OwnedFd,
    log_path: Option<OsString>,
    old_mask: &SigSet,
) -> i32 {
    // SAFETY (whole function): plain syscalls on descriptors this process owns.
    unsafe {
        libc::setsid();
        for s in IGNORED {
            libc::signal(s as libc::c_int, libc::SIG_IGN);
        }
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"mirrord-guard".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    // Keep no directory (and its mount) busy.
    let _ = std::env::set_current_dir("/");

    // Keep the two pipe ends above 2 before stdio is replaced.
    let (Ok(life_r), Ok(ready_w)) = (above_stdio(life_r), above_stdio(ready_w)) else {
        return 1;
    };
    if replace_stdio(log_path.as_ref()).is_err() {
        return 1;
    }
    close_all_except(&[0, 1, 2, life_r.as_raw_fd(), ready_w.as_raw_fd()]);

    // Tell spawn_guard we are set up.
    // SAFETY: writes one byte from a live buffer.
    unsafe {
        libc::write(ready_w.as_raw_fd(), [1u8].as_ptr().cast(), 1);
    }
    drop(ready_w);

    // Wait for the agent to go away: EOF (or an error) on the lifeline.
    let mut buf = [0u8; 16];
    loop {
        // SAFETY: reads into a live buffer of the given length.
        let n = unsafe { libc::read(life_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            continue;
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break;
    }

    let started = std::time::Instant::now();
    for attempt in 1..=5 {
        match super::cleanup_agent(agent_id) {
            Ok(()) => {
                eprintln!(
                    "mirrord-guard: agent {agent_id} (pid {agent_pid}) is gone; its rules are \
                     removed ({:?})",
                    started.elapsed()
                );
                return 0;
            }
            Err(e) => {
                eprintln!(
                    "mirrord-guard: attempt {attempt} to remove the rules of {agent_id}: {e:#}"
                );
                std::thread::sleep(Duration::from_millis(50 * attempt));
            }
        }
    }
    1
}

/// Moves `fd` to a number above 2 (close-on-exec) unless it already is.
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicates a descriptor we own; the new one is owned by the returned OwnedFd.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// /dev/null on 0 and 1; on 2 too, or the log file.
fn replace_stdio(log_path: Option<&OsString>) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let err: std::fs::File = match log_path {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(p)
            .or_else(|_| null.try_clone())?,
        None => null.try_clone()?,
    };
    for (src, dst) in [(&null, 0), (&null, 1), (&err, 2)] {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        if unsafe { libc::dup2(src.as_raw_fd(), dst) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Closes every open descriptor not in `keep` (everything the agent had: its sockets, the
/// namespace file, pipes to the server...).
fn close_all_except(keep: &[RawFd]) {
    let listed: Option<Vec<RawFd>> = std::fs::read_dir("/proc/self/fd").ok().map(|dir| {
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    });
    // The directory's own descriptor is in the list but closed by now: closing it again only
    // fails with EBADF.
    let fds = listed.unwrap_or_else(|| (0..1024).collect());
    for fd in fds {
        if !keep.contains(&fd) {
            // SAFETY: closing descriptors this process will never use again.
            unsafe {
                libc::close(fd);
            }
        }
    }
}

fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Threads of this process (`Threads:` of /proc/self/status), if readable.
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_thread_count(&status)
}

fn parse_thread_count(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_parsing() {
        assert_eq!(
            parse_thread_count("Name:\tx\nThreads:\t3\nSigQ:\t0/1\n"),
            Some(3)
        );
        assert_eq!(parse_thread_count("Name:\tx\n"), None);
    }

    #[test]
    fn refuses_in_a_multithreaded_process() {
        // A second thread that is certainly alive during the call.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let err = spawn_guard("unit").unwrap_err().to_string();
        drop(tx);
        other.join().unwrap();
        assert!(err.contains("before any other thread"), "{err}");
        assert!(spawn_guard("bad id").is_err());
    }
}
