//! The exported libc replacements. Each one enters the guard, checks that this process belongs
//! to a session, hands the call to its feature module, and otherwise calls libc unchanged.

use crate::caddr;
use crate::detour::{real, Guard};
use crate::outgoing::{self, Outcome};
use crate::sockets::{self, Managed};
use crate::state::{state, LayerState};
use crate::{control, dns, incoming, udp};
use libc::{
    addrinfo, c_char, c_int, c_void, hostent, msghdr, pid_t, size_t, sockaddr, socklen_t, ssize_t,
};

/// The session, if this call is the layer's to look at (not re-entrant, process in a session).
fn active() -> Option<(Guard, &'static LayerState)> {
    let guard = Guard::enter()?;
    let st = state()?;
    Some((guard, st))
}

/// # Safety
/// libc's `connect(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some((_guard, st)) = active() else {
        return real::connect(fd, addr, len);
    };
    let Some(remote) = caddr::read(addr, len) else {
        udp::forget_connected(fd);
        return real::connect(fd, addr, len);
    };
    let (Some(domain), Some(kind)) = (caddr::socket_domain(fd), caddr::socket_type(fd)) else {
        return real::connect(fd, addr, len);
    };
    let outcome = match kind {
        libc::SOCK_STREAM => outgoing::connect_tcp(st, fd, remote, domain),
        libc::SOCK_DGRAM => udp::connect_udp(st, fd, remote, domain),
        _ => Outcome::Bypass,
    };
    match outcome {
        Outcome::Bypass => real::connect(fd, addr, len),
        Outcome::Return(r) => r,
    }
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
        if let Some((_guard, _)) = active() {
            sockets::remove(fd);
        }
    }
    fd
}

/// # Safety
/// libc's `bind(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some((_guard, st)) = active() else {
        return real::bind(fd, addr, len);
    };
    let (Some(requested), Some(domain)) = (caddr::read(addr, len), caddr::socket_domain(fd)) else {
        return real::bind(fd, addr, len);
    };
    match incoming::bind(st, fd, requested, domain) {
        Outcome::Bypass => real::bind(fd, addr, len),
        Outcome::Return(r) => r,
    }
}

/// # Safety
/// libc's `listen(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let Some((_guard, _)) = active() else {
        return real::listen(fd, backlog);
    };
    match incoming::listen(fd, backlog) {
        Outcome::Bypass => real::listen(fd, backlog),
        Outcome::Return(r) => r,
    }
}

/// # Safety
/// libc's `accept(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let r = real::accept(fd, addr, len);
    if r >= 0 {
        if let Some((_guard, _)) = active() {
            incoming::accepted(fd, r, addr, len);
        }
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
    let r = real::accept4(fd, addr, len, flags);
    if r >= 0 {
        if let Some((_guard, _)) = active() {
            incoming::accepted(fd, r, addr, len);
        }
    }
    r
}

/// # Safety
/// libc's `getpeername(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if let Some((_guard, _)) = active() {
        if let Some(entry) = sockets::get(fd) {
            let peer = match &*sockets::lock_entry(&entry) {
                Managed::Tcp {
                    remote,
                    pending_error: None,
                    ..
                } => Some(*remote),
                Managed::Udp { connected, .. } => *connected,
                Managed::Incoming { peer, .. } => Some(*peer),
                Managed::Tcp { .. } | Managed::Listener { .. } => None,
            };
            if let (Some(peer), Some(domain)) = (peer, caddr::socket_domain(fd)) {
                caddr::write_out(peer, domain, addr, len);
                return 0;
            }
        }
    }
    real::getpeername(fd, addr, len)
}

/// # Safety
/// libc's `getsockname(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if let Some((_guard, _)) = active() {
        if let Some(entry) = sockets::get(fd) {
            let local = match &*sockets::lock_entry(&entry) {
                Managed::Tcp {
                    local,
                    pending_error: None,
                    ..
                } => Some(*local),
                Managed::Incoming { local, .. } => Some(*local),
                // The program sees the address it asked for (with the port it asked for).
                Managed::Listener { requested, .. } => Some(*requested),
                _ => None,
            };
            if let (Some(local), Some(domain)) = (local, caddr::socket_domain(fd)) {
                caddr::write_out(local, domain, addr, len);
                return 0;
            }
        }
    }
    real::getsockname(fd, addr, len)
}

/// Only `SO_ERROR` of a socket with a failed non-blocking connect is the layer's.
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
    if level == libc::SOL_SOCKET && name == libc::SO_ERROR && !val.is_null() && !len.is_null() {
        if let Some((_guard, _)) = active() {
            if let Some(entry) = sockets::get(fd) {
                if let Managed::Tcp { pending_error, .. } = &mut *sockets::lock_entry(&entry) {
                    if let Some(e) = pending_error.take() {
                        if (*len as usize) >= std::mem::size_of::<c_int>() {
                            *(val as *mut c_int) = e;
                            *len = std::mem::size_of::<c_int>() as socklen_t;
                            return 0;
                        }
                    }
                }
            }
        }
    }
    real::getsockopt(fd, level, name, val, len)
}

/// # Safety
/// libc's `close(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let Some((_guard, _)) = active() else {
        return real::close(fd);
    };
    let entry = sockets::remove(fd);
    let r = real::close(fd);
    if let Some(entry) = entry {
        if !sockets::still_referenced(&entry) {
            match &*sockets::lock_entry(&entry) {
                Managed::Udp { relays, .. } => udp::release(relays),
                Managed::Listener {
                    remote_port,
                    subscribed: true,
                    ..
                } => incoming::closed_listener(*remote_port),
                _ => {}
            }
        }
    }
    r
}

/// # Safety
/// libc's `dup(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let r = real::dup(fd);
    if r >= 0 {
        if let Some((_guard, _)) = active() {
            sockets::duplicate(fd, r);
        }
    }
    r
}

/// # Safety
/// libc's `dup2(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn dup2(fd: c_int, new: c_int) -> c_int {
    let r = real::dup2(fd, new);
    if r >= 0 && fd != new {
        if let Some((_guard, _)) = active() {
            sockets::duplicate(fd, new);
        }
    }
    r
}

/// # Safety
/// libc's `dup3(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int {
    let r = real::dup3(fd, new, flags);
    if r >= 0 {
        if let Some((_guard, _)) = active() {
            sockets::duplicate(fd, new);
        }
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
        if let Some((_guard, _)) = active() {
            sockets::duplicate(fd, r);
        }
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
    if let Some((_guard, st)) = active() {
        if let dns::GaiOutcome::Return(r) = dns::getaddrinfo(st, node, service, hints, res) {
            return r;
        }
    }
    real::getaddrinfo(node, service, hints, res)
}

/// # Safety
/// libc's `freeaddrinfo(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn freeaddrinfo(res: *mut addrinfo) {
    if res.is_null() {
        return;
    }
    // Lists the layer made are freed by the layer whatever the guard says: libc cannot free them.
    if !dns::freeaddrinfo(res) {
        real::freeaddrinfo(res)
    }
}

/// # Safety
/// libc's `gethostbyname(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    if let Some((_guard, st)) = active() {
        if let Some(r) = dns::gethostbyname2(st, name, libc::AF_INET) {
            return r;
        }
    }
    real::gethostbyname(name)
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
    if let Some((_guard, st)) = active() {
        if let Some(r) =
            dns::gethostbyname2_r(st, name, libc::AF_INET, ret, buf, buflen, result, h_errnop)
        {
            return r;
        }
    }
    real::gethostbyname_r(name, ret, buf, buflen, result, h_errnop)
}

/// # Safety
/// libc's `gethostbyname2(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent {
    if let Some((_guard, st)) = active() {
        if let Some(r) = dns::gethostbyname2(st, name, af) {
            return r;
        }
    }
    real::gethostbyname2(name, af)
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
    if let Some((_guard, st)) = active() {
        if let Some(r) = dns::gethostbyname2_r(st, name, af, ret, buf, buflen, result, h_errnop) {
            return r;
        }
    }
    real::gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop)
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
    if let Some((_guard, st)) = active() {
        if let Some(r) = dns::getnameinfo(st, sa, salen, host, hostlen, serv, servlen, flags) {
            return r;
        }
    }
    real::getnameinfo(sa, salen, host, hostlen, serv, servlen, flags)
}

/// # Safety
/// libc's `gethostbyaddr(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyaddr(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
) -> *mut hostent {
    if let Some((_guard, st)) = active() {
        if let Some(r) = dns::gethostbyaddr(st, addr, len, af) {
            return r;
        }
    }
    real::gethostbyaddr(addr, len, af)
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
    if let Some((_guard, st)) = active() {
        if let Some(r) = dns::gethostbyaddr_r(st, addr, len, af, ret, buf, buflen, result, h_errnop)
        {
            return r;
        }
    }
    real::gethostbyaddr_r(addr, len, af, ret, buf, buflen, result, h_errnop)
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
    if !addr.is_null() {
        if let Some((_guard, st)) = active() {
            if let Some(r) = udp::sendto(st, fd, buf, len, flags, addr, addrlen) {
                return r;
            }
        }
    }
    real::sendto(fd, buf, len, flags, addr, addrlen)
}

/// # Safety
/// libc's `sendmsg(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    if !msg.is_null() && !(*msg).msg_name.is_null() {
        if let Some((_guard, st)) = active() {
            if let Some(r) = udp::sendmsg(st, fd, msg, flags) {
                return r;
            }
        }
    }
    real::sendmsg(fd, msg, flags)
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
    if !addr.is_null() {
        if let Some((_guard, _)) = active() {
            if let Some(r) = udp::recvfrom(fd, buf, len, flags, addr, addrlen) {
                return r;
            }
        }
    }
    real::recvfrom(fd, buf, len, flags, addr, addrlen)
}

/// # Safety
/// libc's `recvmsg(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if !msg.is_null() && !(*msg).msg_name.is_null() {
        if let Some((_guard, _)) = active() {
            if let Some(r) = udp::recvmsg(fd, msg, flags) {
                return r;
            }
        }
    }
    real::recvmsg(fd, msg, flags)
}

/// The child of a fork must not share its parent's control channel (their requests and answers
/// would interleave): it drops its copy and opens its own on first use. Every layer lock is held
/// across the fork so that no other thread can hold one at that instant, which would leave it
/// locked forever in the child.
///
/// # Safety
/// libc's `fork(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn fork() -> pid_t {
    let Some((_guard, _)) = active() else {
        return real::fork();
    };
    let mut control = control::lock();
    let table = sockets::lock();
    let names = dns::fork_locks();
    let pid = real::fork();
    if pid == 0 {
        // Dropping the child's copy closes only the child's descriptor (the guard makes the
        // close go straight to libc).
        *control = None;
    }
    drop(names);
    drop(table);
    drop(control);
    pid
}
