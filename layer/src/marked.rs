//! The layer's pass-through for the calls `mirrord exec`'s seccomp filter watches.
//!
//! Under `mirrord exec` every `connect`, `bind`, `listen`, `accept`, `getpeername` and `open` of
//! the program stops at the session's seccomp supervisor, a round trip per call. For the calls
//! the layer has already decided, that second look is waste: the session hands the layer the
//! filter's mark (`MIRRORD_SECCOMP_MARK`), and the layer makes those calls itself as raw system
//! calls with the mark as the sixth argument, which the filter lets through. Every watched call
//! here takes at most five arguments, so the kernel ignores the sixth. Without the mark (no
//! filter: the daemon's launches, `MIRRORD_SECCOMP=0`) every function here is libc's own call.
//!
//! What stays unmarked, so the supervisor still sees it:
//! - opens of the files the supervisor serves (`SUPERVISOR_SERVED_FILES`), so the program
//!   reads the target's version;
//! - `listen`/`accept` of a socket this process did not bind through the layer, and
//!   `getpeername` of one it did not connect or accept through the layer: the supervisor may
//!   have bound or connected it (a raw system call, or a descriptor inherited across `exec`),
//!   and then only it knows the pod's port or the real peer. Per descriptor, two bits say what
//!   the layer saw ([`Seen`]); a bit is cleared whenever the descriptor number may have changed
//!   hands (`socket`, `close`, the result of `accept`), copied by `dup`, and an unknown
//!   descriptor is never marked: a wrong "unseen" costs one round trip, never a wrong answer.
//!
//! Blocking calls stay cancellation points: libc's `connect`, `accept` and `open` are, and a
//! raw `syscall` is not, so asynchronous cancellation is enabled around the raw call (what
//! glibc itself did around blocking system calls before 2.34).

use crate::detour::{errno, real, set_errno};
use libc::{c_char, c_int, c_long, mode_t, sockaddr, socklen_t};
use mirrord_protocol::config::{SECCOMP_MARK_ENV, SUPERVISOR_SERVED_FILES};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

extern "C" {
    // glibc's; the libc crate does not declare it.
    fn pthread_setcanceltype(kind: c_int, old: *mut c_int) -> c_int;
}
/// glibc's value of `PTHREAD_CANCEL_ASYNCHRONOUS`.
const PTHREAD_CANCEL_ASYNCHRONOUS: c_int = 1;

/// The session's mark, if this process runs under a filter that knows it and the layer is
/// deciding its calls (a layer that switched itself off leaves everything to the supervisor).
pub fn mark() -> Option<u64> {
    static MARK: OnceLock<Option<u64>> = OnceLock::new();
    let mark = *MARK.get_or_init(|| {
        let hex = std::env::var(SECCOMP_MARK_ENV).ok()?;
        // Invariant (the filter's): a mark is never 0; a 0 here would be a broken variable.
        u64::from_str_radix(hex.trim(), 16).ok().filter(|m| *m != 0)
    });
    mark.filter(|_| !crate::state::known_inert())
}

/// A raw system call with `mark` as its sixth argument; -1 and errno on failure, as libc.
///
/// # Safety
/// The arguments must be valid for system call `nr`, which takes at most five.
unsafe fn marked(nr: c_long, a: [c_long; 5], mark: u64, cancellable: bool) -> c_long {
    if !cancellable {
        return libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], mark as c_long);
    }
    let mut old: c_int = 0;
    pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, &mut old);
    let r = libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], mark as c_long);
    let e = errno();
    pthread_setcanceltype(old, &mut old);
    set_errno(e);
    r
}

/// What the layer saw of a descriptor in this process.
#[derive(Clone, Copy)]
pub enum Seen {
    /// Bound through the layer's `bind`: the supervisor never bound it.
    Bound,
    /// Connected through the layer's `connect`, or accepted from a listener of [`Seen::Bound`]:
    /// the supervisor never redirected it.
    Peer,
}

/// Descriptors tracked (larger ones are never marked for `listen`/`accept`/`getpeername`).
const TRACKED: usize = 1 << 16;
static BOUND: [AtomicU64; TRACKED / 64] = [const { AtomicU64::new(0) }; TRACKED / 64];
static PEER: [AtomicU64; TRACKED / 64] = [const { AtomicU64::new(0) }; TRACKED / 64];

fn bits(seen: Seen) -> &'static [AtomicU64; TRACKED / 64] {
    match seen {
        Seen::Bound => &BOUND,
        Seen::Peer => &PEER,
    }
}

fn slot(fd: c_int) -> Option<(usize, u64)> {
    let fd = usize::try_from(fd).ok().filter(|fd| *fd < TRACKED)?;
    Some((fd / 64, 1u64 << (fd % 64)))
}

pub fn saw(fd: c_int, seen: Seen) -> bool {
    slot(fd).is_some_and(|(i, bit)| bits(seen)[i].load(Ordering::Relaxed) & bit != 0)
}

pub fn set(fd: c_int, seen: Seen, on: bool) {
    if let Some((i, bit)) = slot(fd) {
        if on {
            bits(seen)[i].fetch_or(bit, Ordering::Relaxed);
        } else {
            bits(seen)[i].fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

/// The descriptor number may now name another socket: nothing is known about it.
pub fn forget(fd: c_int) {
    set(fd, Seen::Bound, false);
    set(fd, Seen::Peer, false);
}

/// `new` is a duplicate of `fd`.
pub fn duplicate(fd: c_int, new: c_int) {
    for seen in [Seen::Bound, Seen::Peer] {
        set(new, seen, saw(fd, seen));
    }
}

/// `connect(2)`: the layer decided every connect it passes on.
///
/// # Safety
/// libc's `connect(2)` contract.
pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    match mark() {
        Some(m) => marked(
            libc::SYS_connect,
            [fd as c_long, addr as c_long, len as c_long, 0, 0],
            m,
            true,
        ) as c_int,
        None => real::connect(fd, addr, len),
    }
}

/// `bind(2)`: the layer decided every bind it passes on (the supervisor's rules are the same).
///
/// # Safety
/// libc's `bind(2)` contract.
pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    match mark() {
        Some(m) => marked(
            libc::SYS_bind,
            [fd as c_long, addr as c_long, len as c_long, 0, 0],
            m,
            false,
        ) as c_int,
        None => real::bind(fd, addr, len),
    }
}

/// `listen(2)`, marked only for a socket the layer bound.
///
/// # Safety
/// libc's `listen(2)` contract.
pub unsafe fn listen(fd: c_int, backlog: c_int) -> c_int {
    match mark().filter(|_| saw(fd, Seen::Bound)) {
        Some(m) => marked(
            libc::SYS_listen,
            [fd as c_long, backlog as c_long, 0, 0, 0],
            m,
            false,
        ) as c_int,
        None => real::listen(fd, backlog),
    }
}

/// `accept4(2)` (`accept` is `flags` 0), marked only on a listener the layer bound; what the
/// new descriptor is known as follows from that.
///
/// # Safety
/// libc's `accept4(2)` contract.
pub unsafe fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
    plain_accept: bool,
) -> c_int {
    let mark = mark().filter(|_| saw(fd, Seen::Bound));
    let r = match mark {
        Some(m) => marked(
            libc::SYS_accept4,
            [
                fd as c_long,
                addr as c_long,
                len as c_long,
                flags as c_long,
                0,
            ],
            m,
            true,
        ) as c_int,
        None if plain_accept => real::accept(fd, addr, len),
        None => real::accept4(fd, addr, len, flags),
    };
    if r >= 0 {
        forget(r);
        // Invariant: only a connection the supervisor did not accept (it never saw the call)
        // may have its getpeername marked; the supervisor remembers the ones it accepted.
        set(r, Seen::Peer, mark.is_some());
    }
    r
}

/// `getpeername(2)`, marked only for a socket the layer connected or accepted.
///
/// # Safety
/// libc's `getpeername(2)` contract.
pub unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match mark().filter(|_| saw(fd, Seen::Peer)) {
        Some(m) => marked(
            libc::SYS_getpeername,
            [fd as c_long, addr as c_long, len as c_long, 0, 0],
            m,
            false,
        ) as c_int,
        None => real::getpeername(fd, addr, len),
    }
}

/// Whether `open`'s mode argument is there: only with `O_CREAT` or `O_TMPFILE`.
pub fn takes_mode(flags: c_int) -> bool {
    flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE
}

/// Whether the supervisor serves opens of `path` (compared as the supervisor does: the exact
/// string, before any resolution).
///
/// # Safety
/// `path` is NULL or a C string.
unsafe fn served_by_supervisor(path: *const c_char) -> bool {
    if path.is_null() {
        return false;
    }
    let path = std::ffi::CStr::from_ptr(path).to_bytes();
    SUPERVISOR_SERVED_FILES
        .iter()
        .any(|served| served.as_bytes() == path)
}

/// `openat(2)` for every flavour of `open` the layer replaces: marked unless the supervisor
/// serves the file; without a mark, or for a served file, libc's `openat` (glibc's `open` is
/// `openat(AT_FDCWD, ...)` too, and `O_LARGEFILE` is implied on 64-bit kernels).
///
/// # Safety
/// libc's `openat(2)` contract; `mode` is ignored unless [`takes_mode`].
pub unsafe fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let mode = if takes_mode(flags) { mode } else { 0 };
    match mark() {
        Some(m) if !served_by_supervisor(path) => marked(
            libc::SYS_openat,
            [
                dirfd as c_long,
                path as c_long,
                flags as c_long,
                mode as c_long,
                0,
            ],
            m,
            true,
        ) as c_int,
        _ => real::openat(dirfd, path, flags, mode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_unknown_until_seen_and_forgotten_again() {
        let fd = 1000;
        assert!(!saw(fd, Seen::Bound) && !saw(fd, Seen::Peer));
        set(fd, Seen::Bound, true);
        assert!(saw(fd, Seen::Bound) && !saw(fd, Seen::Peer));
        duplicate(fd, fd + 1);
        assert!(saw(fd + 1, Seen::Bound));
        forget(fd);
        assert!(!saw(fd, Seen::Bound) && saw(fd + 1, Seen::Bound));
        // Out of range: never known, never a panic.
        set(-1, Seen::Peer, true);
        set(TRACKED as c_int, Seen::Peer, true);
        assert!(!saw(-1, Seen::Peer) && !saw(TRACKED as c_int, Seen::Peer));
    }

    #[test]
    fn mode_is_read_only_when_open_takes_one() {
        assert!(takes_mode(libc::O_CREAT | libc::O_WRONLY));
        assert!(takes_mode(libc::O_TMPFILE | libc::O_RDWR));
        assert!(!takes_mode(libc::O_DIRECTORY | libc::O_RDONLY));
        assert!(!takes_mode(libc::O_RDONLY | libc::O_CLOEXEC));
    }

    #[test]
    fn served_files_are_recognised_exactly() {
        // SAFETY: C string literals.
        unsafe {
            assert!(served_by_supervisor(c"/etc/resolv.conf".as_ptr()));
            assert!(served_by_supervisor(c"/etc/hosts".as_ptr()));
            assert!(!served_by_supervisor(c"/etc/hosts.allow".as_ptr()));
            assert!(!served_by_supervisor(c"hosts".as_ptr()));
            assert!(!served_by_supervisor(std::ptr::null()));
        }
    }

    /// A marked call does what libc's does (no filter here: the kernel ignores args[5]).
    #[test]
    fn a_marked_call_behaves_like_the_plain_one() {
        // SAFETY: NULL address with length 0 on a bad descriptor; a C string literal.
        unsafe {
            let r = marked(libc::SYS_connect, [-1, 0, 0, 0, 0], 0x1234, true);
            assert_eq!((r, errno()), (-1, libc::EBADF));
            let fd = marked(
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as c_long,
                    c"/dev/null".as_ptr() as c_long,
                    (libc::O_RDONLY | libc::O_CLOEXEC) as c_long,
                    0,
                    0,
                ],
                0x1234,
                true,
            );
            assert!(fd >= 0, "errno {}", errno());
            libc::close(fd as c_int);
        }
    }
}
