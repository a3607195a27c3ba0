//! Outgoing TCP: `connect` to a cluster destination becomes a connect of the program's own socket
//! to the session's loopback data listener, followed by a hello naming the real destination. The
//! server makes the connection in the pod and then relays plain bytes, so the program keeps a
//! real TCP socket (its options, its poll semantics) and the data path has no framing.

use crate::caddr;
use crate::control;
use crate::detour::{errno, layer_debug, real};
use crate::dns;
use crate::sockets::{self, Managed};
use crate::state::LayerState;
use libc::c_int;
use mirrord_protocol::codec::{decode_payload, encode, frame_len, HEADER_LEN};
use mirrord_protocol::config::{canonical_ip, Proto, Route};
use mirrord_protocol::layer::{DataReply, LayerHello};
use mirrord_protocol::net::ConnectReply;
use mirrord_protocol::PROTOCOL_VERSION;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The server answers a connect within its own connect timeout (20 s); this only guards against
/// a wedged session.
const REPLY_TIMEOUT_MS: c_int = 30_000;

/// What the hook should do after the layer looked at a call.
pub enum Outcome {
    /// Not ours: call libc with the original arguments.
    Bypass,
    /// Handled: return this value (errno already set when it is -1).
    Return(c_int),
}

/// Route of a TCP connection to `remote`.
pub fn route_tcp(st: &LayerState, remote: SocketAddr, hostname: Option<&str>) -> Route {
    let out = &st.config.feature.network.outgoing;
    let ip = canonical_ip(remote.ip());
    if !out.tcp
        || ip.is_unspecified()
        || (ip.is_loopback()
            && (out.ignore_localhost || crate::debugger::is_debugger_port(remote.port())))
    {
        return Route::Local;
    }
    match &out.filter {
        Some(f) => f.route(Proto::Tcp, ip, remote.port(), hostname),
        None => Route::Remote,
    }
}

/// # Safety
/// `fd` is the program's socket; called from the `connect` hook inside the guard.
pub unsafe fn connect_tcp(
    st: &LayerState,
    fd: c_int,
    remote: SocketAddr,
    domain: c_int,
) -> Outcome {
    if let Some(entry) = sockets::get(fd) {
        // A second connect on a socket we already connected: answer as the kernel would. But
        // an entry whose socket is no longer connected is stale (its descriptor was closed
        // behind our back, e.g. by libuv's raw close syscall, and the number reused).
        let mut m = sockets::lock_entry(&entry);
        if let Managed::Tcp { pending_error, .. } = &mut *m {
            match pending_error.take() {
                Some(e) => {
                    crate::detour::set_errno(e);
                    return Outcome::Return(-1);
                }
                None if still_connected(fd) => {
                    crate::detour::set_errno(libc::EISCONN);
                    return Outcome::Return(-1);
                }
                None => {
                    drop(m);
                    sockets::remove(fd);
                }
            }
        }
    }
    let hostname = dns::hostname_of(remote.ip());
    if route_tcp(st, remote, hostname.as_deref()) == Route::Local {
        return Outcome::Bypass;
    }
    let data_addrs = match control::data_addrs() {
        Ok(a) => a,
        Err(e) => {
            layer_debug!("connect {remote}: {e}");
            crate::detour::set_errno(libc::ECONNREFUSED);
            return Outcome::Return(-1);
        }
    };
    // An IPv6 socket reaches the IPv6 listener, or the IPv4 one through a v4-mapped address.
    let data_addr = data_addrs
        .iter()
        .find(|a| (domain == libc::AF_INET6) == a.is_ipv6())
        .or_else(|| data_addrs.iter().find(|a| a.is_ipv4()))
        .copied();
    let Some(data_addr) = data_addr else {
        crate::detour::set_errno(libc::ECONNREFUSED);
        return Outcome::Return(-1);
    };

    let flags = real::fcntl(fd, libc::F_GETFL, 0);
    let nonblocking = flags >= 0 && flags & libc::O_NONBLOCK != 0;
    if nonblocking {
        real::fcntl(fd, libc::F_SETFL, (flags & !libc::O_NONBLOCK) as usize);
    }
    let result = handshake(st, fd, data_addr, domain, remote, hostname);
    if nonblocking {
        real::fcntl(fd, libc::F_SETFL, flags as usize);
    }
    match result {
        Ok(ConnectReply::Connected { local, .. }) => {
            layer_debug!("connect {remote}: through the pod (pod-side address {local})");
            sockets::insert(
                fd,
                Arc::new(Mutex::new(Managed::Tcp {
                    remote,
                    local,
                    pending_error: None,
                })),
            );
            if nonblocking {
                // The connection is already up, but programs that set O_NONBLOCK expect the
                // asynchronous form; the socket is writable at once and SO_ERROR is 0.
                crate::detour::set_errno(libc::EINPROGRESS);
                Outcome::Return(-1)
            } else {
                Outcome::Return(0)
            }
        }
        Ok(ConnectReply::Failed { errno: e }) | Err(e) => fail_connect(fd, remote, e, nonblocking),
    }
}

/// Whether the kernel says `fd` has a peer.
fn still_connected(fd: c_int) -> bool {
    // SAFETY: sockaddr_storage is plain data and large enough for any address.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        real::getpeername(fd, &mut storage as *mut _ as *mut libc::sockaddr, &mut len) == 0
    }
}

/// Puts the socket back into the unconnected state and reports `e` the way the kernel would:
/// directly for a blocking socket, through `SO_ERROR` after `EINPROGRESS` for a non-blocking one.
unsafe fn fail_connect(fd: c_int, remote: SocketAddr, e: i32, nonblocking: bool) -> Outcome {
    layer_debug!("connect {remote}: failed in the pod, errno {e}");
    // connect(AF_UNSPEC) dissolves the association with the data listener, so a retry on this
    // socket starts clean; a disconnected socket also polls as "done" (POLLHUP).
    let mut unspec: libc::sockaddr = std::mem::zeroed();
    unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    real::connect(
        fd,
        &unspec,
        std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
    );
    if nonblocking {
        sockets::insert(
            fd,
            Arc::new(Mutex::new(Managed::Tcp {
                remote,
                local: remote,
                pending_error: Some(e),
            })),
        );
        crate::detour::set_errno(libc::EINPROGRESS);
    } else {
        crate::detour::set_errno(e);
    }
    Outcome::Return(-1)
}

/// Connects `fd` to the data listener, sends the hello, reads the reply. Errors are errnos.
unsafe fn handshake(
    st: &LayerState,
    fd: c_int,
    data_addr: SocketAddr,
    domain: c_int,
    remote: SocketAddr,
    hostname: Option<String>,
) -> Result<ConnectReply, i32> {
    let (addr, len) = caddr::to_c(data_addr, domain);
    if real::connect(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
        let e = errno();
        crate::state::complain(&format!(
            "cannot reach the mirrord session's data listener {data_addr}: errno {e}"
        ));
        return Err(libc::ECONNREFUSED);
    }
    let remote_canonical = SocketAddr::new(canonical_ip(remote.ip()), remote.port());
    let hello = LayerHello::Tcp {
        version: PROTOCOL_VERSION,
        token: st.token.clone(),
        pid: std::process::id(),
        remote: remote_canonical,
        hostname,
    };
    let frame = encode(&hello).map_err(|_| libc::EINVAL)?;
    write_all(fd, &frame)?;
    let mut header = [0u8; HEADER_LEN];
    read_exact(fd, &mut header)?;
    let len = frame_len(header).map_err(|_| libc::EPROTO)?;
    let mut payload = vec![0u8; len];
    read_exact(fd, &mut payload)?;
    match decode_payload::<DataReply>(&payload) {
        Ok(DataReply::Connect(reply)) => Ok(reply),
        Ok(DataReply::Refused { reason }) => {
            crate::state::complain(&format!(
                "the mirrord session refused a connection: {reason}"
            ));
            Err(libc::ECONNREFUSED)
        }
        Err(_) => Err(libc::EPROTO),
    }
}

unsafe fn write_all(fd: c_int, mut buf: &[u8]) -> Result<(), i32> {
    while !buf.is_empty() {
        let n = libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL);
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(libc::ECONNREFUSED);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes, never more: what follows belongs to the program.
unsafe fn read_exact(fd: c_int, mut buf: &mut [u8]) -> Result<(), i32> {
    while !buf.is_empty() {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let r = libc::poll(&mut pfd, 1, REPLY_TIMEOUT_MS);
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r <= 0 {
            return Err(libc::ETIMEDOUT);
        }
        let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(libc::ECONNREFUSED);
        }
        if n == 0 {
            return Err(libc::ECONNREFUSED);
        }
        buf = &mut buf[n as usize..];
    }
    Ok(())
}
