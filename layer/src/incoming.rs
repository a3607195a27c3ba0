//! Incoming traffic: a program that listens on port P gets the traffic that arrives at the
//! pod's port P (mirrored or stolen, as configured).
//!
//! `bind` puts the program's socket on loopback (the same port if free, else any), `listen`
//! subscribes the port through the session, and the session delivers each connection by
//! connecting to that loopback address. `accept` then asks the session who the connection really
//! came from, so `accept`'s address, `getpeername` and `getsockname` show the cluster client and
//! the pod address, as if the program ran in the pod.

use crate::caddr;
use crate::control;
use crate::detour::{layer_debug, real, set_errno};
use crate::outgoing::Outcome;
use crate::sockets::{self, Managed};
use crate::state::{complain, LayerState};
use libc::{c_int, sockaddr, socklen_t};
use mirrord_protocol::config::canonical_ip;
use mirrord_protocol::layer::{LayerRequest, ServerResponse};
use mirrord_protocol::net::DeliverySource;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

/// # Safety
/// Called from the `bind` hook inside the guard; `fd` is the program's socket.
pub unsafe fn bind(st: &LayerState, fd: c_int, requested: SocketAddr, domain: c_int) -> Outcome {
    let incoming = &st.config.feature.network.incoming;
    if requested.port() == 0 || caddr::socket_type(fd) != Some(libc::SOCK_STREAM) {
        return Outcome::Bypass;
    }
    let ip = canonical_ip(requested.ip());
    // A server bound to loopback in the pod never gets the pod's traffic either, and such
    // listeners are often private (a debugger's inspector on a random port): never subscribed.
    if ip.is_loopback() {
        return Outcome::Bypass;
    }
    let Some(remote_port) = incoming.remote_port(requested.port()) else {
        return Outcome::Bypass;
    };
    let loopback: IpAddr = if domain == libc::AF_INET6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    // Prefer the configured port (`listen_ports`), else the program's own port (so local tools
    // can still reach it there), then any free port, as mirrord does when the port is taken.
    let preferred = incoming
        .listen_port(remote_port)
        .unwrap_or(requested.port());
    let candidates = [preferred, 0];
    let mut last_errno = libc::EADDRINUSE;
    for port in candidates {
        let (c, len) = caddr::to_c(SocketAddr::new(loopback, port), domain);
        if crate::marked::bind(fd, &c as *const _ as *const sockaddr, len) == 0 {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let mut slen = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
            real::getsockname(fd, &mut storage as *mut _ as *mut sockaddr, &mut slen);
            let Some(bound) = caddr::read(&storage as *const _ as *const sockaddr, slen) else {
                return Outcome::Return(0);
            };
            layer_debug!("bind {requested}: bound at {bound}, pod port {remote_port}");
            sockets::insert(
                fd,
                Arc::new(Mutex::new(Managed::Listener {
                    requested,
                    bound,
                    remote_port,
                    subscribed: false,
                })),
            );
            return Outcome::Return(0);
        }
        last_errno = crate::detour::errno();
    }
    set_errno(last_errno);
    Outcome::Return(-1)
}

/// # Safety
/// Called from the `listen` hook inside the guard.
pub unsafe fn listen(fd: c_int, backlog: c_int) -> Outcome {
    let Some(entry) = sockets::get(fd) else {
        return Outcome::Bypass;
    };
    let (bound, remote_port) = match &*sockets::lock_entry(&entry) {
        Managed::Listener {
            bound,
            remote_port,
            subscribed: false,
            ..
        } => (*bound, *remote_port),
        _ => return Outcome::Bypass,
    };
    let r = crate::marked::listen(fd, backlog);
    if r != 0 {
        return Outcome::Return(r);
    }
    let request = LayerRequest::Listen {
        port: remote_port,
        local: bound,
    };
    match control::request(&request) {
        Ok(ServerResponse::Done) => {
            if let Managed::Listener { subscribed, .. } = &mut *sockets::lock_entry(&entry) {
                *subscribed = true;
            }
            layer_debug!("listening: pod port {remote_port} delivered to {bound}");
            Outcome::Return(0)
        }
        Ok(ServerResponse::Error(e)) => {
            complain(&format!(
                "cannot receive the traffic of the pod's port {remote_port}: {e}"
            ));
            set_errno(libc::EADDRINUSE);
            Outcome::Return(-1)
        }
        Ok(other) => {
            complain(&format!("unexpected answer to listen: {other:?}"));
            set_errno(libc::EADDRINUSE);
            Outcome::Return(-1)
        }
        Err(_) => {
            set_errno(libc::EADDRINUSE);
            Outcome::Return(-1)
        }
    }
}

/// After a successful `accept` on `listener_fd` returned `fd`: learn the real client.
///
/// # Safety
/// `addr`/`len` as given to `accept`.
pub unsafe fn accepted(listener_fd: c_int, fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) {
    let Some(entry) = sockets::get(listener_fd) else {
        // A fresh descriptor number may carry a stale entry of a socket closed behind our back.
        sockets::remove(fd);
        return;
    };
    // Invariant: the entry is unlocked before the table is taken (lock order: table → entry).
    let listener = match &*sockets::lock_entry(&entry) {
        Managed::Listener {
            bound, remote_port, ..
        } => Some((*bound, *remote_port)),
        _ => None,
    };
    let Some((listener, remote_port)) = listener else {
        sockets::remove(fd);
        return;
    };
    let mut storage: libc::sockaddr_storage = std::mem::zeroed();
    let mut slen = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    if crate::marked::getpeername(fd, &mut storage as *mut _ as *mut sockaddr, &mut slen) != 0 {
        return;
    }
    let Some(source) = caddr::read(&storage as *const _ as *const sockaddr, slen) else {
        return;
    };
    let delivery = DeliverySource::of(source);
    let known = delivery.and_then(|d| {
        let (peer_ip, local_ip) = known_client(d.index)?;
        Some((
            SocketAddr::new(peer_ip, d.port),
            SocketAddr::new(local_ip, remote_port),
        ))
    });
    let answer = match known {
        Some(found) => Ok(ServerResponse::IncomingPeer(Some(found))),
        None => control::request(&LayerRequest::IncomingPeer { listener, source }),
    };
    match answer {
        Ok(ServerResponse::IncomingPeer(Some((peer, local)))) => {
            if let Some(d) = delivery.filter(|d| d.port == peer.port()) {
                remember_client(d.index, (peer.ip(), local.ip()));
            }
            // An IPv6 client on the program's IPv4 socket cannot be shown: keep the real
            // (loopback) addresses rather than garble them.
            let domain = caddr::socket_domain(fd).unwrap_or(libc::AF_INET);
            if caddr::representable(peer, domain) && caddr::representable(local, domain) {
                sockets::insert(fd, Arc::new(Mutex::new(Managed::Incoming { peer, local })));
                caddr::write_out(peer, domain, addr, len);
            } else {
                sockets::remove(fd);
            }
        }
        // A local client connecting to the loopback listener directly: leave it as it is.
        _ => {
            sockets::remove(fd);
        }
    }
}

/// Delivery source index → (client IP, pod IP), as the session answered for the first
/// connection of each client the agent delivered itself (see `DeliverySource`). Invariant: an
/// index keeps its meaning for the agent's life, so an entry never goes stale; bounded by the
/// agent's own limit on indexes.
static CLIENTS: Mutex<Option<HashMap<u32, (IpAddr, IpAddr)>>> = Mutex::new(None);

fn known_client(index: u32) -> Option<(IpAddr, IpAddr)> {
    let clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    clients.as_ref()?.get(&index).copied()
}

fn remember_client(index: u32, ips: (IpAddr, IpAddr)) {
    let mut clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    clients.get_or_insert_with(HashMap::new).insert(index, ips);
}

/// The program closed a subscribed listener.
pub fn closed_listener(remote_port: u16) {
    let _ = control::request(&LayerRequest::Unlisten { port: remote_port });
}
