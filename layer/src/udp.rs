//! Outgoing UDP, DNS datagrams included (resolvers such as c-ares, used by Node's `dns.resolve*`,
//! talk to the nameserver themselves and never call `getaddrinfo`).
//!
//! For each (socket, cluster destination) the session opens a relay: a UDP socket on loopback
//! whose datagrams travel to the destination from inside the pod, and whose replies come back to
//! the program's socket. The layer sends to the relay instead of the destination and rewrites the
//! relay's address back into the destination's on receive, so the program sees the peer it
//! addressed (c-ares drops answers from any other address).

use crate::caddr;
use crate::control;
use crate::detour::{layer_debug, real, set_errno};
use crate::outgoing::Outcome;
use crate::sockets::{self, Managed};
use crate::state::LayerState;
use libc::{c_int, c_void, msghdr, size_t, sockaddr, socklen_t, ssize_t};
use mirrord_protocol::config::{canonical_ip, Proto, Route};
use mirrord_protocol::layer::{LayerRequest, ServerResponse};
use mirrord_protocol::net::UdpOpenReply;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// `Some(dns)` if datagrams to `remote` go through the pod; `dns` marks a flow to port 53 that
/// goes to the pod's own nameserver.
pub fn route_udp(st: &LayerState, remote: SocketAddr) -> Option<bool> {
    let net = &st.config.feature.network;
    let ip = canonical_ip(remote.ip());
    if ip.is_unspecified() {
        return None;
    }
    if remote.port() == 53 && net.dns.enabled {
        return Some(true);
    }
    let out = &net.outgoing;
    if !out.udp || (ip.is_loopback() && out.ignore_localhost) {
        return None;
    }
    let hostname = crate::dns::hostname_of(ip);
    match &out.filter {
        Some(f) if f.route(Proto::Udp, ip, remote.port(), hostname.as_deref()) == Route::Local => {
            None
        }
        _ => Some(false),
    }
}

fn same(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && canonical_ip(a.ip()) == canonical_ip(b.ip())
}

/// The relay for datagrams from `fd` to `remote`, opened on first use.
fn relay_for(fd: c_int, remote: SocketAddr, dns: bool) -> Result<SocketAddr, i32> {
    let entry = sockets::get(fd);
    if let Some(e) = &entry {
        if let Managed::Udp { relays, .. } = &*sockets::lock_entry(e) {
            if let Some((_, relay)) = relays.iter().find(|(r, _)| same(*r, remote)) {
                return Ok(*relay);
            }
        }
    }
    let req = LayerRequest::UdpOpen {
        remote: SocketAddr::new(canonical_ip(remote.ip()), remote.port()),
        dns,
    };
    let relay = match control::request(&req) {
        Ok(ServerResponse::UdpOpened {
            relay: Some(relay),
            reply: UdpOpenReply::Opened { .. },
        }) => relay,
        Ok(ServerResponse::UdpOpened {
            reply: UdpOpenReply::Failed { errno },
            ..
        }) => return Err(errno),
        Ok(_) => return Err(libc::EPROTO),
        Err(_) => return Err(libc::ENETUNREACH),
    };
    layer_debug!("udp {remote}: relay {relay} (dns: {dns})");
    match entry {
        Some(e) => {
            let mut m = sockets::lock_entry(&e);
            if let Managed::Udp { relays, .. } = &mut *m {
                relays.push((remote, relay));
            }
        }
        None => sockets::insert(
            fd,
            Arc::new(Mutex::new(Managed::Udp {
                relays: vec![(remote, relay)],
                connected: None,
            })),
        ),
    }
    Ok(relay)
}

/// # Safety
/// Called from the `connect` hook inside the guard.
pub unsafe fn connect_udp(
    st: &LayerState,
    fd: c_int,
    remote: SocketAddr,
    domain: c_int,
) -> Outcome {
    let Some(dns) = route_udp(st, remote) else {
        forget_connected(fd);
        return Outcome::Bypass;
    };
    let relay = match relay_for(fd, remote, dns) {
        Ok(r) => r,
        Err(e) => {
            set_errno(e);
            return Outcome::Return(-1);
        }
    };
    let (addr, len) = caddr::to_c(relay, domain);
    let r = crate::marked::connect(fd, &addr as *const _ as *const sockaddr, len);
    if r == 0 {
        if let Some(e) = sockets::get(fd) {
            if let Managed::Udp { connected, .. } = &mut *sockets::lock_entry(&e) {
                *connected = Some(remote);
            }
        }
    }
    Outcome::Return(r)
}

/// The program connected a managed UDP socket somewhere local (or dissolved the association).
pub fn forget_connected(fd: c_int) {
    if let Some(e) = sockets::get(fd) {
        if let Managed::Udp { connected, .. } = &mut *sockets::lock_entry(&e) {
            *connected = None;
        }
    }
}

fn is_udp(fd: c_int) -> bool {
    caddr::socket_type(fd) == Some(libc::SOCK_DGRAM)
}

/// # Safety
/// Arguments as for `sendto(2)`.
pub unsafe fn sendto(
    st: &LayerState,
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    addrlen: socklen_t,
) -> Option<ssize_t> {
    let remote = caddr::read(addr, addrlen)?;
    if !is_udp(fd) {
        return None;
    }
    let dns = route_udp(st, remote)?;
    let domain = caddr::socket_domain(fd)?;
    match relay_for(fd, remote, dns) {
        Ok(relay) => {
            let (c, clen) = caddr::to_c(relay, domain);
            Some(real::sendto(
                fd,
                buf,
                len,
                flags,
                &c as *const _ as *const sockaddr,
                clen,
            ))
        }
        Err(e) => {
            set_errno(e);
            Some(-1)
        }
    }
}

/// # Safety
/// Arguments as for `sendmsg(2)`.
pub unsafe fn sendmsg(
    st: &LayerState,
    fd: c_int,
    msg: *const msghdr,
    flags: c_int,
) -> Option<ssize_t> {
    if msg.is_null() {
        return None;
    }
    let remote = caddr::read((*msg).msg_name as *const sockaddr, (*msg).msg_namelen)?;
    if !is_udp(fd) {
        return None;
    }
    let dns = route_udp(st, remote)?;
    let domain = caddr::socket_domain(fd)?;
    match relay_for(fd, remote, dns) {
        Ok(relay) => {
            let (mut c, clen) = caddr::to_c(relay, domain);
            let mut copy = *msg;
            copy.msg_name = &mut c as *mut _ as *mut c_void;
            copy.msg_namelen = clen;
            Some(real::sendmsg(fd, &copy, flags))
        }
        Err(e) => {
            set_errno(e);
            Some(-1)
        }
    }
}

/// The destination a relay stands for, if `from` is one of this socket's relays.
fn unrelay(fd: c_int, from: SocketAddr) -> Option<SocketAddr> {
    let e = sockets::get(fd)?;
    let m = sockets::lock_entry(&e);
    match &*m {
        Managed::Udp { relays, .. } => relays.iter().find(|(_, r)| same(*r, from)).map(|(d, _)| *d),
        _ => None,
    }
}

fn manages_udp(fd: c_int) -> bool {
    sockets::get(fd).is_some_and(|e| matches!(&*sockets::lock_entry(&e), Managed::Udp { .. }))
}

/// # Safety
/// Arguments as for `recvfrom(2)`.
pub unsafe fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addrlen: *mut socklen_t,
) -> Option<ssize_t> {
    if addr.is_null() || addrlen.is_null() || !manages_udp(fd) {
        return None;
    }
    let mut storage: libc::sockaddr_storage = std::mem::zeroed();
    let mut slen = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    let n = real::recvfrom(
        fd,
        buf,
        len,
        flags,
        &mut storage as *mut _ as *mut sockaddr,
        &mut slen,
    );
    if n >= 0 {
        rewrite_source(fd, &storage, slen, addr, addrlen);
    }
    Some(n)
}

/// # Safety
/// Arguments as for `recvmsg(2)`.
pub unsafe fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> Option<ssize_t> {
    if msg.is_null() || (*msg).msg_name.is_null() || !manages_udp(fd) {
        return None;
    }
    let user_name = (*msg).msg_name as *mut sockaddr;
    let mut user_len = (*msg).msg_namelen;
    let mut storage: libc::sockaddr_storage = std::mem::zeroed();
    (*msg).msg_name = &mut storage as *mut _ as *mut c_void;
    (*msg).msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    let n = real::recvmsg(fd, msg, flags);
    let got = (*msg).msg_namelen;
    (*msg).msg_name = user_name as *mut c_void;
    if n >= 0 {
        rewrite_source(fd, &storage, got, user_name, &mut user_len);
        (*msg).msg_namelen = user_len;
    } else {
        (*msg).msg_namelen = user_len;
    }
    Some(n)
}

unsafe fn rewrite_source(
    fd: c_int,
    storage: &libc::sockaddr_storage,
    slen: socklen_t,
    out: *mut sockaddr,
    outlen: *mut socklen_t,
) {
    let from = caddr::read(storage as *const _ as *const sockaddr, slen);
    match from.and_then(|f| unrelay(fd, f)) {
        Some(remote) => {
            let domain = storage.ss_family as c_int;
            caddr::write_out(remote, domain, out, outlen);
        }
        None => {
            let n = (*outlen).min(slen) as usize;
            std::ptr::copy_nonoverlapping(storage as *const _ as *const u8, out as *mut u8, n);
            *outlen = slen;
        }
    }
}

/// The program closed the last descriptor of a managed UDP socket: its relays can go.
pub fn release(relays: &[(SocketAddr, SocketAddr)]) {
    for (_, relay) in relays {
        let _ = control::request(&LayerRequest::UdpClose { relay: *relay });
    }
}
