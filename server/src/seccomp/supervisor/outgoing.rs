//! `connect`: TCP through the session's data listener (the layer's hello and reply), UDP
//! through a relay ([`super::udp`]), and the routing decision shared by both.

use super::super::addr;
use super::super::notify::{self, Notif};
use super::*;

impl Supervisor {
    pub(super) fn connect_call(self: Arc<Self>, listener: &Arc<OwnedFd>, n: Notif) {
        let len = (n.data.args[2] as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        let remote = notify::read_memory(n.pid, n.data.args[1], len)
            .ok()
            .and_then(|b| addr::parse(&b));
        let Some(remote) = remote else {
            notify::proceed(listener, n.id);
            return;
        };
        if leave_alone(remote) {
            notify::proceed(listener, n.id);
            return;
        }
        self.on_worker(listener, n, Overflow::Inline, move |this, listener, n| {
            this.connect(listener, n, remote)
        });
    }

    pub(super) fn connect(&self, listener: &OwnedFd, n: &Notif, remote: SocketAddr) {
        let Ok(pidfd) = notify::pidfd(n.pid) else {
            notify::proceed(listener, n.id);
            return;
        };
        let Ok(sock) = notify::take_fd(&pidfd, n.data.args[0]) else {
            notify::proceed(listener, n.id);
            return;
        };
        // Invariant: the pid in a notification may be reused once its caller is gone; the
        // descriptor is acted on only if the call is still waiting, i.e. it is the caller's.
        if !notify::still_valid(listener, n.id) {
            return;
        }
        let sock_type = notify::sockopt_int(&sock, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(-1);
        let domain = notify::sockopt_int(&sock, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
        let hostname = self.shared.hostname_of(remote.ip());
        let plan = plan(&self.network, sock_type, remote, hostname.as_deref());
        let tgid = notify::thread_group(n.pid).unwrap_or(n.pid);
        let outcome = match plan {
            Plan::Leave => {
                notify::proceed(listener, n.id);
                return;
            }
            Plan::Tcp => self.connect_tcp(&sock, domain, remote, tgid, hostname),
            Plan::Udp { dns } => self.connect_udp(&sock, domain, remote, dns),
        };
        match outcome {
            Ok(via) => {
                if let Ok(inode) = notify::inode(&sock) {
                    self.remember(inode, remote, via);
                }
                tracing::debug!(pid = tgid, %remote, %via, "seccomp: connect through the session");
                notify::succeed(listener, n.id, 0);
            }
            Err(errno) => {
                tracing::debug!(pid = tgid, %remote, errno, "seccomp: connect failed");
                notify::fail(listener, n.id, errno)
            }
        }
    }

    /// The program's socket is connected to the data listener and told where to go, as the
    /// layer does; the call returns once the pod answered. A non-blocking socket gets the
    /// answer at once too (0, "connected immediately", which every event loop accepts), never
    /// `EINPROGRESS`: the supervisor has read the reply frame before the program sees the
    /// socket, so no readiness has to be hidden from it.
    pub(super) fn connect_tcp(
        &self,
        sock: &OwnedFd,
        domain: i32,
        remote: SocketAddr,
        tgid: u32,
        hostname: Option<String>,
    ) -> Result<SocketAddr, i32> {
        let data_addrs = self.link.data_addrs().map_err(|e| {
            tracing::warn!("seccomp: cannot reach the session: {e}");
            libc::ECONNREFUSED
        })?;
        let data_addr = data_addrs
            .iter()
            .find(|a| (domain == libc::AF_INET6) == a.is_ipv6())
            .or_else(|| data_addrs.iter().find(|a| a.is_ipv4()))
            .copied()
            .ok_or(libc::ECONNREFUSED)?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        connect_fd(sock, data_addr, domain, deadline)?;
        let hello = LayerHello::Tcp {
            version: PROTOCOL_VERSION,
            token: self.link.token.clone(),
            pid: tgid,
            remote: SocketAddr::new(canonical_ip(remote.ip()), remote.port()),
            hostname,
        };
        let sent = encode(&hello)
            .map_err(|_| libc::EINVAL)
            .and_then(|frame| write_all(sock, &frame, deadline));
        let reply = sent.and_then(|()| read_reply(sock, deadline));
        match reply {
            Ok(ConnectReply::Connected { .. }) => Ok(data_addr),
            Ok(ConnectReply::Failed { errno }) => {
                disconnect(sock);
                Err(errno)
            }
            Err(e) => {
                disconnect(sock);
                Err(e)
            }
        }
    }
}

/// Invariant: loopback stays local for the supervisor. The layer turns the connects and sends
/// it handles into ones to loopback (data listeners, UDP relays) before the syscall, so this is
/// what keeps a call from being handled twice. DNS datagrams are the exception, as in the
/// layer: port 53 anywhere means the pod's nameserver (relays never use port 53).
pub(super) fn leave_alone(remote: SocketAddr) -> bool {
    let ip = canonical_ip(remote.ip());
    ip.is_unspecified() || (ip.is_loopback() && remote.port() != 53)
}

/// The same decisions as the layer's (`feature.network.outgoing`, `dns`), except that loopback
/// was left alone before (see `connect_call`). Name rules of an outgoing filter see the name
/// the session last resolved to that address (a layer's lookup, so a program the layer routed
/// locally by name is routed locally here too); a lookup the program made itself over DNS
/// datagrams gives no name.
pub(super) fn plan(
    network: &NetworkConfig,
    sock_type: i32,
    remote: SocketAddr,
    hostname: Option<&str>,
) -> Plan {
    let ip = canonical_ip(remote.ip());
    let out = &network.outgoing;
    let filtered = |proto| match &out.filter {
        Some(f) => f.route(proto, ip, remote.port(), hostname) == Route::Remote,
        None => true,
    };
    match sock_type {
        libc::SOCK_STREAM if out.tcp && !ip.is_loopback() && filtered(Proto::Tcp) => Plan::Tcp,
        libc::SOCK_DGRAM if remote.port() == 53 && network.dns.enabled => Plan::Udp { dns: true },
        libc::SOCK_DGRAM if out.udp && !ip.is_loopback() && filtered(Proto::Udp) => {
            Plan::Udp { dns: false }
        }
        _ => Plan::Leave,
    }
}

/// Waits until `sock` is ready for `events` or the deadline passes.
pub(super) fn wait(sock: &OwnedFd, events: i16, deadline: Instant) -> Result<(), i32> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(libc::ETIMEDOUT);
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r > 0 {
            return Ok(());
        }
        if r < 0 && errno() != libc::EINTR {
            return Err(errno());
        }
    }
}

/// Connects the (program's) socket to a loopback address, whether it is blocking or not.
pub(super) fn connect_fd(
    sock: &OwnedFd,
    to: SocketAddr,
    domain: i32,
    deadline: Instant,
) -> Result<(), i32> {
    let sa = addr::encode(to, domain);
    // SAFETY: `sa` holds a sockaddr of its own length.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            sa.as_ptr().cast(),
            sa.len() as libc::socklen_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    match errno() {
        libc::EINPROGRESS | libc::EINTR => {
            wait(sock, libc::POLLOUT, deadline)?;
            match notify::sockopt_int(sock, libc::SOL_SOCKET, libc::SO_ERROR) {
                Ok(0) => Ok(()),
                Ok(e) => Err(e),
                Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
        // Calls on a socket that is already connected get the kernel's own answer.
        e @ (libc::EISCONN | libc::EALREADY | libc::EAFNOSUPPORT) => Err(e),
        e => {
            tracing::warn!("seccomp: cannot reach the session's loopback address {to}: errno {e}");
            Err(libc::ECONNREFUSED)
        }
    }
}

/// Back to the unconnected state, as after a failed connect.
pub(super) fn disconnect(sock: &OwnedFd) {
    // SAFETY: sockaddr with AF_UNSPEC dissolves the association; the size is the family field's.
    unsafe {
        let mut sa: libc::sockaddr = std::mem::zeroed();
        sa.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            sock.as_raw_fd(),
            &sa,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}

pub(super) fn write_all(sock: &OwnedFd, mut buf: &[u8], deadline: Instant) -> Result<(), i32> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => wait(sock, libc::POLLOUT, deadline)?,
                _ => return Err(libc::ECONNREFUSED),
            }
            continue;
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes, never more: what follows belongs to the program.
pub(super) fn read_exact(sock: &OwnedFd, mut buf: &mut [u8], deadline: Instant) -> Result<(), i32> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => wait(sock, libc::POLLIN, deadline)?,
                _ => return Err(libc::ECONNREFUSED),
            }
            continue;
        }
        if n == 0 {
            return Err(libc::ECONNREFUSED);
        }
        buf = &mut buf[n as usize..];
    }
    Ok(())
}

pub(super) fn read_reply(sock: &OwnedFd, deadline: Instant) -> Result<ConnectReply, i32> {
    let mut header = [0u8; HEADER_LEN];
    read_exact(sock, &mut header, deadline)?;
    let len = frame_len(header).map_err(|_| libc::EPROTO)?;
    let mut payload = vec![0u8; len];
    read_exact(sock, &mut payload, deadline)?;
    match decode_payload::<DataReply>(&payload) {
        Ok(DataReply::Connect(reply)) => Ok(reply),
        Ok(DataReply::Refused { reason }) => {
            tracing::warn!("seccomp: the session refused a connection: {reason}");
            Err(libc::ECONNREFUSED)
        }
        Err(_) => Err(libc::EPROTO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(json: &str) -> NetworkConfig {
        let config: mirrord_protocol::config::MirrordConfig = serde_json::from_str(json).unwrap();
        config.feature.network
    }

    #[test]
    fn plans_follow_the_layer_rules() {
        let n = network("{}");
        let svc: SocketAddr = "10.96.0.50:8080".parse().unwrap();
        assert_eq!(plan(&n, libc::SOCK_STREAM, svc, None), Plan::Tcp);
        assert_eq!(
            plan(&n, libc::SOCK_DGRAM, svc, None),
            Plan::Udp { dns: false }
        );
        let dns: SocketAddr = "127.0.0.53:53".parse().unwrap();
        assert_eq!(
            plan(&n, libc::SOCK_DGRAM, dns, None),
            Plan::Udp { dns: true }
        );
        assert_eq!(plan(&n, libc::SOCK_STREAM, dns, None), Plan::Leave);
        assert_eq!(plan(&n, libc::SOCK_RAW, svc, None), Plan::Leave);
        let local = network(
            r#"{"feature":{"network":{"outgoing":{"filter":{"local":["10.96.0.0/12"]}}}}}"#,
        );
        assert_eq!(plan(&local, libc::SOCK_STREAM, svc, None), Plan::Leave);
        let by_name = network(
            r#"{"feature":{"network":{"outgoing":{"filter":{"local":["payment-service"]}}}}}"#,
        );
        assert_eq!(
            plan(&by_name, libc::SOCK_STREAM, svc, Some("payment-service")),
            Plan::Leave
        );
        assert_eq!(plan(&by_name, libc::SOCK_STREAM, svc, None), Plan::Tcp);
        let no_tcp = network(r#"{"feature":{"network":{"outgoing":{"tcp":false}}}}"#);
        assert_eq!(plan(&no_tcp, libc::SOCK_STREAM, svc, None), Plan::Leave);
    }
}
