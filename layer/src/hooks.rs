//! The exported libc replacements. Each one goes through [`hook`] (or [`after`] when libc runs
//! first), which enters the re-entrancy guard, checks that this process belongs to a session,
//! catches panics and keeps errno; the body hands the call to its feature module, and returns
//! `None` for calls that are not the layer's, which then go to libc unchanged.

use crate::caddr;
use crate::detour::{after, hook, real, set_errno};
use crate::marked::{self, Seen};
use crate::outgoing::{self, Outcome};
use crate::sockets::{self, Managed, TcpState};
use crate::{control, dns, incoming, pending, udp};
use libc::{
    addrinfo, c_char, c_int, c_void, epoll_event, hostent, msghdr, pid_t, size_t, sockaddr,
    socklen_t, ssize_t,
};

/// `Outcome` as the hook wrapper wants it.
fn handled(o: Outcome) -> Option<c_int> {
    match o {
        Outcome::Bypass => None,
        Outcome::Return(r) => Some(r),
    }
}

/// # Safety
/// libc's `connect(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // Whatever comes of it, this connect is the layer's and never the supervisor's.
    marked::set(fd, Seen::Peer, true);
    hook(
        "connect",
        || marked::connect(fd, addr, len),
        |st| {
            let Some(remote) = caddr::read(addr, len) else {
                udp::forget_connected(fd);
                return None;
            };
            let (domain, kind) = (caddr::socket_domain(fd)?, caddr::socket_type(fd)?);
            handled(match kind {
                libc::SOCK_STREAM => outgoing::connect_tcp(st, fd, remote, domain),
                libc::SOCK_DGRAM => udp::connect_udp(st, fd, remote, domain),
                _ => Outcome::Bypass,
            })
        },
    )
}

/// A new socket: whatever the table knew about its descriptor number belongs to a socket that
/// was closed without our `close` seeing it (raw `close` syscalls, as libuv makes), so it goes.
///
/// # Safety
/// libc's `socket(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let fd = real::socket(domain, ty, protocol);
    if fd >= 0 {
        marked::forget(fd);
        after("socket", |_| {
            sockets::remove(fd);
            pending::forget(fd);
        });
    }
    fd
}

/// # Safety
/// libc's `bind(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let r = hook(
        "bind",
        || marked::bind(fd, addr, len),
        |st| {
            let (requested, domain) = (caddr::read(addr, len)?, caddr::socket_domain(fd)?);
            handled(incoming::bind(st, fd, requested, domain))
        },
    );
    if r == 0 {
        marked::set(fd, Seen::Bound, true);
    }
    r
}

/// # Safety
/// libc's `listen(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    hook(
        "listen",
        || marked::listen(fd, backlog),
        |_| handled(incoming::listen(fd, backlog)),
    )
}

/// # Safety
/// libc's `accept(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let r = marked::accept4(fd, addr, len, 0, true);
    if r >= 0 {
        after("accept", |_| incoming::accepted(fd, r, addr, len));
    }
    r
}

/// # Safety
/// libc's `accept4(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let r = marked::accept4(fd, addr, len, flags, false);
    if r >= 0 {
        after("accept4", |_| incoming::accepted(fd, r, addr, len));
    }
    r
}

/// # Safety
/// libc's `getpeername(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    hook(
        "getpeername",
        || marked::getpeername(fd, addr, len),
        |_| {
            let entry = sockets::get(fd)?;
            let peer = match &*sockets::lock_entry(&entry) {
                Managed::Tcp {
                    remote,
                    state: TcpState::Connected { .. },
                } => *remote,
                // Not connected (yet, or any more) as far as the program knows.
                Managed::Tcp { .. } => {
                    set_errno(libc::ENOTCONN);
                    return Some(-1);
                }
                Managed::Udp { connected, .. } => (*connected)?,
                Managed::Incoming { peer, .. } => *peer,
                Managed::Listener { .. } => return None,
            };
            caddr::write_out(peer, caddr::socket_domain(fd)?, addr, len);
            Some(0)
        },
    )
}

/// # Safety
/// libc's `getsockname(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    hook(
        "getsockname",
        || real::getsockname(fd, addr, len),
        |_| {
            let entry = sockets::get(fd)?;
            let local = match &*sockets::lock_entry(&entry) {
                Managed::Tcp {
                    state: TcpState::Connected { local, .. },
                    ..
                } => *local,
                Managed::Incoming { local, .. } => *local,
                // The program sees the address it asked for (with the port it asked for).
                Managed::Listener { requested, .. } => *requested,
                _ => return None,
            };
            caddr::write_out(local, caddr::socket_domain(fd)?, addr, len);
            Some(0)
        },
    )
}

/// Only `SO_ERROR` of a socket with a non-blocking connect the layer made is the layer's: a
/// pending one is settled first (waiting for the pod-side outcome, bounded), a failed one
/// reports its error once and is unconnected from then on.
///
/// # Safety
/// libc's `getsockopt(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    let original = || real::getsockopt(fd, level, name, val, len);
    if level != libc::SOL_SOCKET || name != libc::SO_ERROR || val.is_null() || len.is_null() {
        return original();
    }
    hook("getsockopt", original, |_| {
        let entry = sockets::get(fd)?;
        let connecting = matches!(
            &*sockets::lock_entry(&entry),
            Managed::Tcp {
                state: TcpState::Connecting,
                ..
            }
        );
        if connecting {
            pending::settle_blocking(fd, &entry);
        }
        let failed = match &*sockets::lock_entry(&entry) {
            Managed::Tcp {
                state: TcpState::Failed(e),
                ..
            } => *e,
            _ => return None,
        };
        if (*len as usize) < std::mem::size_of::<c_int>() {
            return None;
        }
        sockets::remove(fd);
        *(val as *mut c_int) = failed;
        *len = std::mem::size_of::<c_int>() as socklen_t;
        Some(0)
    })
}

/// # Safety
/// libc's `close(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    marked::forget(fd);
    let mut entry = None;
    after("close", |_| {
        entry = sockets::remove(fd);
        pending::forget(fd);
    });
    let r = real::close(fd);
    if let Some(entry) = entry {
        after("close", |_| {
            if sockets::still_referenced(&entry) {
                return;
            }
            // Invariant: no entry lock is held across the control request below.
            let release = match &*sockets::lock_entry(&entry) {
                Managed::Udp { relays, .. } => Release::Relays(relays.clone()),
                Managed::Listener {
                    remote_port,
                    subscribed: true,
                    ..
                } => Release::Port(*remote_port),
                _ => Release::Nothing,
            };
            match release {
                Release::Relays(relays) => udp::release(&relays),
                Release::Port(port) => incoming::closed_listener(port),
                Release::Nothing => {}
            }
        });
    }
    r
}

/// What the session must let go of when a socket's last descriptor closes.
enum Release {
    Relays(Vec<(std::net::SocketAddr, std::net::SocketAddr)>),
    Port(u16),
    Nothing,
}

/// # Safety
/// libc's `dup(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let r = real::dup(fd);
    if r >= 0 {
        marked::duplicate(fd, r);
        after("dup", |_| sockets::duplicate(fd, r));
    }
    r
}

/// # Safety
/// libc's `dup2(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn dup2(fd: c_int, new: c_int) -> c_int {
    let r = real::dup2(fd, new);
    if r >= 0 && fd != new {
        marked::duplicate(fd, new);
        after("dup2", |_| sockets::duplicate(fd, new));
    }
    r
}

/// # Safety
/// libc's `dup3(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int {
    let r = real::dup3(fd, new, flags);
    if r >= 0 {
        marked::duplicate(fd, new);
        after("dup3", |_| sockets::duplicate(fd, new));
    }
    r
}

/// `fcntl` is variadic in C; every command takes at most one integer or pointer argument, which
/// the x86-64 and AArch64 calling conventions pass in the same register either way.
///
/// # Safety
/// libc's `fcntl(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    let r = real::fcntl(fd, cmd, arg);
    if r >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) {
        marked::duplicate(fd, r);
        after("fcntl", |_| sockets::duplicate(fd, r));
    }
    r
}

/// glibc ≥ 2.28 routes `fcntl` of programs built with 64-bit file offsets here.
///
/// # Safety
/// libc's `fcntl(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    fcntl(fd, cmd, arg)
}

/// # Safety
/// libc's `getaddrinfo(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    hook(
        "getaddrinfo",
        || real::getaddrinfo(node, service, hints, res),
        |st| match dns::getaddrinfo(st, node, service, hints, res) {
            dns::GaiOutcome::Return(r) => Some(r),
            dns::GaiOutcome::Bypass => None,
        },
    )
}

/// # Safety
/// libc's `freeaddrinfo(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn freeaddrinfo(res: *mut addrinfo) {
    if res.is_null() {
        return;
    }
    // Lists the layer made are freed by the layer whatever the guard says: libc cannot free them.
    // Not through `hook` for that reason; the same barrier and errno rule, by hand. After a
    // panic the list is leaked rather than handed to libc, which did not make it.
    let saved = crate::detour::errno();
    let ours = std::panic::catch_unwind(|| dns::freeaddrinfo(res)).unwrap_or(true);
    if !ours {
        real::freeaddrinfo(res)
    }
    set_errno(saved);
}

/// # Safety
/// libc's `gethostbyname(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    hook(
        "gethostbyname",
        || real::gethostbyname(name),
        |st| dns::gethostbyname2(st, name, libc::AF_INET),
    )
}

/// # Safety
/// libc's `gethostbyname_r(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname_r(
    name: *const c_char,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    hook(
        "gethostbyname_r",
        || real::gethostbyname_r(name, ret, buf, buflen, result, h_errnop),
        |st| dns::gethostbyname2_r(st, name, libc::AF_INET, ret, buf, buflen, result, h_errnop),
    )
}

/// # Safety
/// libc's `gethostbyname2(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent {
    hook(
        "gethostbyname2",
        || real::gethostbyname2(name, af),
        |st| dns::gethostbyname2(st, name, af),
    )
}

/// # Safety
/// libc's `gethostbyname2_r(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    hook(
        "gethostbyname2_r",
        || real::gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop),
        |st| dns::gethostbyname2_r(st, name, af, ret, buf, buflen, result, h_errnop),
    )
}

/// # Safety
/// libc's `getnameinfo(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn getnameinfo(
    sa: *const sockaddr,
    salen: socklen_t,
    host: *mut c_char,
    hostlen: socklen_t,
    serv: *mut c_char,
    servlen: socklen_t,
    flags: c_int,
) -> c_int {
    hook(
        "getnameinfo",
        || real::getnameinfo(sa, salen, host, hostlen, serv, servlen, flags),
        |st| dns::getnameinfo(st, sa, salen, host, hostlen, serv, servlen, flags),
    )
}

/// # Safety
/// libc's `gethostbyaddr(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyaddr(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
) -> *mut hostent {
    hook(
        "gethostbyaddr",
        || real::gethostbyaddr(addr, len, af),
        |st| dns::gethostbyaddr(st, addr, len, af),
    )
}

/// # Safety
/// libc's `gethostbyaddr_r(3)` contract.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gethostbyaddr_r(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    hook(
        "gethostbyaddr_r",
        || real::gethostbyaddr_r(addr, len, af, ret, buf, buflen, result, h_errnop),
        |st| dns::gethostbyaddr_r(st, addr, len, af, ret, buf, buflen, result, h_errnop),
    )
}

/// # Safety
/// libc's `sendto(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    addrlen: socklen_t,
) -> ssize_t {
    if addr.is_null() {
        return real::sendto(fd, buf, len, flags, addr, addrlen);
    }
    hook(
        "sendto",
        || real::sendto(fd, buf, len, flags, addr, addrlen),
        |st| udp::sendto(st, fd, buf, len, flags, addr, addrlen),
    )
}

/// # Safety
/// libc's `sendmsg(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    if msg.is_null() || (*msg).msg_name.is_null() {
        return real::sendmsg(fd, msg, flags);
    }
    hook(
        "sendmsg",
        || real::sendmsg(fd, msg, flags),
        |st| udp::sendmsg(st, fd, msg, flags),
    )
}

/// # Safety
/// libc's `recvfrom(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addrlen: *mut socklen_t,
) -> ssize_t {
    if addr.is_null() {
        return real::recvfrom(fd, buf, len, flags, addr, addrlen);
    }
    hook(
        "recvfrom",
        || real::recvfrom(fd, buf, len, flags, addr, addrlen),
        |_| udp::recvfrom(fd, buf, len, flags, addr, addrlen),
    )
}

/// # Safety
/// libc's `recvmsg(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if msg.is_null() || (*msg).msg_name.is_null() {
        return real::recvmsg(fd, msg, flags);
    }
    hook(
        "recvmsg",
        || real::recvmsg(fd, msg, flags),
        |_| udp::recvmsg(fd, msg, flags),
    )
}

/// The child of a fork must not share its parent's control channel (their requests and answers
/// would interleave), nor its connect watcher: it forgets both and opens its own on first use.
///
/// Invariant: every layer lock is held across the fork, taken in the documented order (control
/// channel → socket table → every entry → pending connects → watcher → name map → addrinfo
/// set), so that no other thread can hold one at that instant, which would leave it locked
/// forever in the child. No thread holds any of them across a blocking wait (a control request
/// waits with none held), so the fork waits only for short critical sections.
///
/// # Safety
/// libc's `fork(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn fork() -> pid_t {
    // Set once libc's fork ran: a panic after it must not fork a second time.
    let forked = std::cell::Cell::new(None);
    let original = || forked.get().unwrap_or_else(|| real::fork());
    hook("fork", original, |_| {
        // Lazily initialised values are initialised now: a child forked while another thread
        // was initialising one would wait for that thread forever.
        crate::state::debug_enabled();
        crate::debugger::is_debugger_port(0);
        let mut control = control::lock();
        let table = sockets::lock();
        let entries = sockets::lock_all(&table);
        let mut pending_locks = pending::fork_locks();
        let names = dns::fork_locks();
        let pid = real::fork();
        forked.set(Some(pid));
        if pid == 0 {
            control::forget_in_child(&mut control);
            pending::reset_in_child(&mut pending_locks);
        }
        drop(names);
        drop(pending_locks);
        drop(entries);
        drop(table);
        drop(control);
        Some(pid)
    })
}

/// A pending non-blocking connect is registered without read/write interest until its
/// outcome arrives (see `pending`); every other call goes to libc unchanged, without a lock
/// when no connect is pending.
///
/// # Safety
/// libc's `epoll_ctl(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut epoll_event,
) -> c_int {
    if !pending::any() {
        return real::epoll_ctl(epfd, op, fd, event);
    }
    hook(
        "epoll_ctl",
        || real::epoll_ctl(epfd, op, fd, event),
        |_| pending::epoll_ctl(epfd, op, fd, event),
    )
}

/// A pending non-blocking connect shows no readiness to `poll` until its outcome arrives (see
/// `pending`); every other call goes to libc unchanged, without a lock when none is pending.
///
/// # Safety
/// libc's `poll(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    if !pending::any() {
        return real::poll(fds, nfds, timeout);
    }
    let wait = (timeout >= 0).then(|| std::time::Duration::from_millis(timeout as u64));
    hook(
        "poll",
        || real::poll(fds, nfds, timeout),
        |_| pending::poll(fds, nfds, wait, std::ptr::null()),
    )
}

/// As [`poll`].
///
/// # Safety
/// libc's `ppoll(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    if !pending::any() {
        return real::ppoll(fds, nfds, timeout, sigmask);
    }
    let wait = (!timeout.is_null()).then(|| {
        std::time::Duration::new(
            (*timeout).tv_sec.max(0) as u64,
            (*timeout).tv_nsec.clamp(0, 999_999_999) as u32,
        )
    });
    hook(
        "ppoll",
        || real::ppoll(fds, nfds, timeout, sigmask),
        |_| pending::poll(fds, nfds, wait, sigmask),
    )
}

/// As [`poll`], for `select`.
///
/// # Safety
/// libc's `select(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn select(
    nfds: c_int,
    read: *mut libc::fd_set,
    write: *mut libc::fd_set,
    except: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> c_int {
    if !pending::any() {
        return real::select(nfds, read, write, except, timeout);
    }
    hook(
        "select",
        || real::select(nfds, read, write, except, timeout),
        |_| pending::select(nfds, read, write, except, timeout),
    )
}

/// Every `open` flavour: no body of the layer's own; the pass-through is the point (see
/// [`marked::openat`]: marked, so the seccomp supervisor does not stop it, unless the
/// supervisor serves the file).
///
/// # Safety
/// libc's `openat(2)` contract.
unsafe fn open_hook(
    name: &'static str,
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: libc::mode_t,
) -> c_int {
    hook(name, || marked::openat(dirfd, path, flags, mode), |_| None)
}

/// `open` is variadic in C: the mode is read as a third argument, and only with `O_CREAT` or
/// `O_TMPFILE` (when the caller passes one). That is sound on the two ABIs the layer is built
/// for: on x86-64 (System V) and on AArch64 Linux (AAPCS64; Apple's variant differs) a variadic
/// integer argument travels in the same register as a named one would (`rdx`, `x2`), so a
/// caller that passed a mode put it exactly there, and one that did not left a value the
/// layer never uses.
///
/// # Safety
/// libc's `open(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: libc::mode_t) -> c_int {
    open_hook("open", libc::AT_FDCWD, path, flags, mode)
}

/// As [`open`] (64-bit offsets are every open's on 64-bit Linux).
///
/// # Safety
/// libc's `open(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: libc::mode_t) -> c_int {
    open_hook("open64", libc::AT_FDCWD, path, flags, mode)
}

/// As [`open`], with the mode as the fourth argument (`rcx`, `x3`).
///
/// # Safety
/// libc's `openat(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: libc::mode_t,
) -> c_int {
    open_hook("openat", dirfd, path, flags, mode)
}

/// As [`openat`].
///
/// # Safety
/// libc's `openat(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: libc::mode_t,
) -> c_int {
    open_hook("openat64", dirfd, path, flags, mode)
}

/// `_FORTIFY_SOURCE`'s `open` without a mode. With `O_CREAT`/`O_TMPFILE` glibc's own aborts the
/// program ("invalid open call"), so that case goes to it unchanged.
///
/// # Safety
/// glibc's `__open_2` contract.
#[no_mangle]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    if marked::takes_mode(flags) {
        return real::__open_2(path, flags);
    }
    open_hook("__open_2", libc::AT_FDCWD, path, flags, 0)
}

/// As [`__open_2`].
///
/// # Safety
/// glibc's `__open64_2` contract.
#[no_mangle]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    if marked::takes_mode(flags) {
        return real::__open64_2(path, flags);
    }
    open_hook("__open64_2", libc::AT_FDCWD, path, flags, 0)
}

/// As [`__open_2`].
///
/// # Safety
/// glibc's `__openat_2` contract.
#[no_mangle]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    if marked::takes_mode(flags) {
        return real::__openat_2(dirfd, path, flags);
    }
    open_hook("__openat_2", dirfd, path, flags, 0)
}

/// As [`__open_2`].
///
/// # Safety
/// glibc's `__openat64_2` contract.
#[no_mangle]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    if marked::takes_mode(flags) {
        return real::__openat64_2(dirfd, path, flags);
    }
    open_hook("__openat64_2", dirfd, path, flags, 0)
}
