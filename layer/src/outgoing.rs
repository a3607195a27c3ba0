//! Outgoing TCP: `connect` to a cluster destination becomes a connect of the program's own socket
//! to the session's loopback data listener, followed by a hello naming the real destination. The
//! server makes the connection in the pod and then relays plain bytes, so the program keeps a
//! real TCP socket (its options, its poll semantics) and the data path has no framing.

use crate::caddr;
use crate::control;
use crate::detour::{errno, layer_debug, real, set_errno};
use crate::dns;
use crate::pending;
use crate::sockets::{self, Managed, TcpState};
use crate::state::LayerState;
use libc::c_int;
use mirrord_protocol::codec::{decode_payload, encode, frame_len, HEADER_LEN};
use mirrord_protocol::config::{canonical_ip, Proto, Route};
use mirrord_protocol::layer::{DataReply, LayerHello};
use mirrord_protocol::net::ConnectReply;
use mirrord_protocol::PROTOCOL_VERSION;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

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
        // A program may also poll with connect: an outcome that arrived counts.
        pending::settle(fd);
        let mut m = sockets::lock_entry(&entry);
        if let Managed::Tcp { state, .. } = &mut *m {
            match *state {
                TcpState::Connecting => {
                    set_errno(libc::EALREADY);
                    return Outcome::Return(-1);
                }
                // The kernel reports an asynchronous connect's failure once, then the socket
                // is unconnected.
                TcpState::Failed(e) => {
                    drop(m);
                    sockets::remove(fd);
                    set_errno(e);
                    return Outcome::Return(-1);
                }
                TcpState::Connected { local, reported } if still_connected(fd) => {
                    if !reported {
                        *state = TcpState::Connected {
                            local,
                            reported: true,
                        };
                        return Outcome::Return(0);
                    }
                    set_errno(libc::EISCONN);
                    return Outcome::Return(-1);
                }
                TcpState::Connected { .. } => {
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
            set_errno(libc::ECONNREFUSED);
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
        set_errno(libc::ECONNREFUSED);
        return Outcome::Return(-1);
    };

    let flags = real::fcntl(fd, libc::F_GETFL, 0);
    let nonblocking = flags >= 0 && flags & libc::O_NONBLOCK != 0;
    if nonblocking {
        // The loopback hop completes at once; only the pod-side outcome takes time.
        real::fcntl(fd, libc::F_SETFL, (flags & !libc::O_NONBLOCK) as usize);
    }
    let sent = send_hello(st, fd, data_addr, domain, remote, hostname);
    if nonblocking {
        real::fcntl(fd, libc::F_SETFL, flags as usize);
    }
    if let Err(e) = sent {
        return fail_connect(fd, remote, e, nonblocking);
    }
    let entry: sockets::Entry = Arc::new(Mutex::new(Managed::Tcp {
        remote,
        state: TcpState::Connecting,
    }));
    if nonblocking {
        // Invariant (departure from a synchronous connect): a non-blocking connect returns at
        // once; the outcome arrives through writability and SO_ERROR (see `pending`).
        sockets::insert(fd, entry.clone());
        if let Err(e) = pending::add(fd, entry.clone()) {
            // Without the watcher the outcome is still read when the program asks for it.
            layer_debug!("connect {remote}: no connect watcher (errno {e})");
        }
        set_errno(libc::EINPROGRESS);
        return Outcome::Return(-1);
    }
    let outcome = read_reply(fd);
    let mut m = sockets::lock_entry(&entry);
    let note = pending::apply(fd, &mut m, outcome);
    layer_debug!("{note}");
    match *m {
        Managed::Tcp {
            state: TcpState::Failed(e),
            ..
        } => {
            set_errno(e);
            Outcome::Return(-1)
        }
        Managed::Tcp {
            state: TcpState::Connected { local, .. },
            remote,
        } => {
            // A blocking connect said so itself.
            *m = Managed::Tcp {
                remote,
                state: TcpState::Connected {
                    local,
                    reported: true,
                },
            };
            drop(m);
            sockets::insert(fd, entry);
            Outcome::Return(0)
        }
        _ => {
            drop(m);
            sockets::insert(fd, entry);
            Outcome::Return(0)
        }
    }
}

/// Whether the kernel says `fd` has a peer.
fn still_connected(fd: c_int) -> bool {
    // SAFETY: sockaddr_storage is plain data and large enough for any address.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        crate::marked::getpeername(fd, &mut storage as *mut _ as *mut libc::sockaddr, &mut len) == 0
    }
}

/// The connect failed before the hello went out: the socket goes back to the unconnected state
/// and `e` reaches the program the way the kernel would report it: directly for a blocking
/// socket, through `SO_ERROR` after `EINPROGRESS` for a non-blocking one.
unsafe fn fail_connect(fd: c_int, remote: SocketAddr, e: i32, nonblocking: bool) -> Outcome {
    layer_debug!("connect {remote}: failed, errno {e}");
    pending::disconnect(fd);
    if nonblocking {
        sockets::insert(
            fd,
            Arc::new(Mutex::new(Managed::Tcp {
                remote,
                state: TcpState::Failed(e),
            })),
        );
        set_errno(libc::EINPROGRESS);
    } else {
        set_errno(e);
    }
    Outcome::Return(-1)
}

/// Connects `fd` to the data listener and sends the hello. Errors are errnos.
unsafe fn send_hello(
    st: &LayerState,
    fd: c_int,
    data_addr: SocketAddr,
    domain: c_int,
    remote: SocketAddr,
    hostname: Option<String>,
) -> Result<(), i32> {
    let (addr, len) = caddr::to_c(data_addr, domain);
    if crate::marked::connect(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
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
    write_all(fd, &frame)
}

/// Reads the reply frame of a blocking connect (exactly the frame), within
/// [`pending::REPLY_TIMEOUT`].
unsafe fn read_reply(fd: c_int) -> Result<ConnectReply, i32> {
    let deadline = std::time::Instant::now() + pending::REPLY_TIMEOUT;
    let mut header = [0u8; HEADER_LEN];
    read_exact(fd, &mut header, deadline)?;
    let len = frame_len(header).map_err(|_| libc::EPROTO)?;
    let mut payload = vec![0u8; len];
    read_exact(fd, &mut payload, deadline)?;
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
unsafe fn read_exact(
    fd: c_int,
    mut buf: &mut [u8],
    deadline: std::time::Instant,
) -> Result<(), i32> {
    while !buf.is_empty() {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let r = real::poll(&mut pfd, 1, left.as_millis() as c_int);
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
