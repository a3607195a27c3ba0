//! The session's side of the filter: one thread receives the program's watched calls and
//! answers each one. Quick answers (files, `getpeername`, calls left alone) come from that
//! thread; a connect through the pod runs on a thread of its own, so one slow connect never
//! holds up another call.

use super::addr;
use super::link::SessionLink;
use super::notify::{self, Notif};
use mirrord_protocol::codec::{decode_payload, encode, frame_len, HEADER_LEN};
use mirrord_protocol::config::{canonical_ip, NetworkConfig, Proto, Route};
use mirrord_protocol::layer::{DataReply, LayerHello, LayerRequest, ServerResponse};
use mirrord_protocol::net::{ConnectReply, UdpOpenReply};
use mirrord_protocol::PROTOCOL_VERSION;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a connect may wait for the pod's answer (as the layer's).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connects handled on threads of their own at once; beyond it the receiving thread handles
/// them itself (the program's other calls then wait: back-pressure, not unbounded threads).
const MAX_CONNECT_THREADS: usize = 256;
/// Largest datagram the supervisor carries for a program (UDP's own limit).
const MAX_DATAGRAM: usize = 65_536;
/// Redirected sockets remembered for `getpeername` (oldest forgotten first).
const MAX_REDIRECTED: usize = 65_536;

/// The target's resolver files, served to every open of `/etc/resolv.conf` / `/etc/hosts`.
pub struct TargetFiles {
    pub resolv_conf: Vec<u8>,
    pub hosts: Vec<u8>,
}

pub struct Supervisor {
    pub link: SessionLink,
    /// The session, for the names its lookups gave addresses (outgoing filter name rules).
    pub shared: Arc<crate::proxy::ProxyShared>,
    pub network: NetworkConfig,
    pub files: Option<TargetFiles>,
    /// Sockets the supervisor connected through the session, by inode: (the address the
    /// program asked for, the loopback address the socket really has as its peer).
    redirected: Mutex<Redirected>,
    /// Listening sockets the supervisor bound to loopback, by inode: (the pod's port, the
    /// loopback address the session delivers that port's connections to).
    listeners: Mutex<HashMap<u64, (u16, SocketAddr)>>,
    /// UDP sockets that sent to cluster addresses without connecting, by inode: (destination,
    /// the session's relay for it).
    udp: Mutex<HashMap<u64, Vec<(SocketAddr, SocketAddr)>>>,
    connect_threads: AtomicUsize,
}

/// What to do with a slow call when every worker thread is busy.
#[derive(Clone, Copy)]
enum Overflow {
    /// Handle it on the receiving thread (back-pressure).
    Inline,
    /// Let the kernel run it unchanged (a call that may wait indefinitely must never hold the
    /// receiving thread).
    Proceed,
}

#[derive(Default)]
struct Redirected {
    by_inode: HashMap<u64, (SocketAddr, SocketAddr)>,
    order: VecDeque<u64>,
}

/// What to do with a connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Leave,
    Tcp,
    Udp { dns: bool },
}

impl Supervisor {
    pub fn new(
        link: SessionLink,
        shared: Arc<crate::proxy::ProxyShared>,
        network: NetworkConfig,
        files: Option<TargetFiles>,
    ) -> Self {
        Supervisor {
            link,
            shared,
            network,
            files,
            redirected: Mutex::default(),
            listeners: Mutex::default(),
            udp: Mutex::default(),
            connect_threads: AtomicUsize::new(0),
        }
    }

    /// Serves `listener` until no process uses the filter any more.
    pub fn serve(self: Arc<Self>, listener: OwnedFd) {
        let listener = Arc::new(listener);
        loop {
            let mut pfd = libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, -1) };
            if r < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                tracing::warn!("seccomp supervisor: poll failed, stopping");
                return;
            }
            if pfd.revents & libc::POLLIN == 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
            {
                // Every process of the program is gone.
                return;
            }
            match notify::receive(&listener) {
                Ok(Some(n)) => {
                    // Invariant: the receiving thread never dies of a bug in a handler: its
                    // end would make every watched call of the program fail with ENOSYS.
                    let this = self.clone();
                    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        this.dispatch(&listener, n)
                    }));
                    if handled.is_err() {
                        tracing::error!("seccomp: a handler panicked; the call continues");
                        notify::proceed(&listener, n.id);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("seccomp supervisor: {e}, stopping");
                    return;
                }
            }
        }
    }

    fn dispatch(self: Arc<Self>, listener: &Arc<OwnedFd>, n: Notif) {
        let nr = n.data.nr as i64;
        let args = n.data.args;
        if nr == libc::SYS_openat {
            // An absolute path ignores the directory descriptor.
            self.open_call(listener, &n, args[1], args[2] as i32);
        } else if open_syscall(nr) {
            self.open_call(listener, &n, args[0], args[1] as i32);
        } else if nr == libc::SYS_getpeername {
            self.getpeername(listener, &n);
        } else if nr == libc::SYS_connect {
            self.connect_call(listener, n);
        } else if nr == libc::SYS_bind {
            self.bind(listener, &n);
        } else if nr == libc::SYS_listen {
            self.listen(listener, &n);
        } else if nr == libc::SYS_sendto {
            self.sendto_call(listener, n);
        } else if nr == libc::SYS_recvfrom {
            self.recvfrom_call(listener, n);
        } else if nr == libc::SYS_accept4 {
            self.accept(listener, &n, n.data.args[3] as i32);
        } else if accept_syscall(nr) {
            self.accept(listener, &n, 0);
        } else {
            notify::proceed(listener, n.id);
        }
    }

    // ---- /etc/resolv.conf and /etc/hosts ----

    fn open_call(&self, listener: &OwnedFd, n: &Notif, path: u64, flags: i32) {
        let Some(content) = self.served_file(n.pid, path, flags) else {
            notify::proceed(listener, n.id);
            return;
        };
        match memfd_with(content) {
            Ok(fd) => {
                if let Err(e) =
                    notify::reply_with_fd(listener, n.id, &fd, flags & libc::O_CLOEXEC != 0)
                {
                    notify::fail(listener, n.id, e.raw_os_error().unwrap_or(libc::EMFILE));
                }
            }
            Err(e) => {
                tracing::debug!("seccomp: memfd for a resolver file: {e}");
                notify::proceed(listener, n.id);
            }
        }
    }

    /// The target's version of the file the program opens, if it is one we serve and the open
    /// only reads it.
    fn served_file(&self, tid: u32, path: u64, flags: i32) -> Option<&[u8]> {
        let files = self.files.as_ref()?;
        let not_plain_read = libc::O_WRONLY
            | libc::O_RDWR
            | libc::O_CREAT
            | libc::O_TRUNC
            | libc::O_PATH
            | libc::O_DIRECTORY;
        if flags & not_plain_read != 0 {
            return None;
        }
        // Longer than any name we serve: not ours.
        let name = notify::read_c_string(tid, path, 32)?;
        match name.as_slice() {
            b"/etc/resolv.conf" => Some(&files.resolv_conf),
            b"/etc/hosts" => Some(&files.hosts),
            _ => None,
        }
    }

    // ---- getpeername ----

    fn getpeername(&self, listener: &OwnedFd, n: &Notif) {
        let answered = self.peer_of(n).is_some_and(|(domain, remote)| {
            write_sockaddr(
                n.pid,
                n.data.args[1],
                n.data.args[2],
                addr::encode(remote, domain),
            )
            .is_ok()
        });
        if answered && notify::still_valid(listener, n.id) {
            notify::succeed(listener, n.id, 0);
        } else {
            notify::proceed(listener, n.id);
        }
    }

    /// The address the program connected a redirected socket to (and the socket's domain).
    fn peer_of(&self, n: &Notif) -> Option<(i32, SocketAddr)> {
        let pidfd = notify::pidfd(n.pid).ok()?;
        let sock = notify::take_fd(&pidfd, n.data.args[0]).ok()?;
        let inode = notify::inode(&sock).ok()?;
        let (remote, via) = *self
            .redirected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_inode
            .get(&inode)?;
        // Invariant: an inode may be reused by a later socket; only one still connected to our
        // loopback address is the one we redirected.
        if !addr::same(real_peer(&sock)?, via) {
            return None;
        }
        let domain = notify::sockopt_int(&sock, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
        Some((domain, remote))
    }

    fn remember(&self, inode: u64, remote: SocketAddr, via: SocketAddr) {
        let mut r = self.redirected.lock().unwrap_or_else(|p| p.into_inner());
        if r.by_inode.insert(inode, (remote, via)).is_none() {
            r.order.push_back(inode);
        }
        while r.order.len() > MAX_REDIRECTED {
            if let Some(old) = r.order.pop_front() {
                r.by_inode.remove(&old);
            }
        }
    }

    // ---- bind and listen (incoming traffic) ----

    /// As the layer does: a TCP socket bound to a port of every address (or a non-loopback
    /// one) is bound to loopback instead (same port if free), and its `listen` subscribes the
    /// pod's port. Invariant: the layer binds the sockets it handles to loopback itself and the
    /// supervisor leaves loopback binds alone, so no port is subscribed twice.
    fn bind(&self, listener: &OwnedFd, n: &Notif) {
        match self.bind_to_loopback(listener, n) {
            None => notify::proceed(listener, n.id),
            Some(Ok(())) => notify::succeed(listener, n.id, 0),
            Some(Err(errno)) => notify::fail(listener, n.id, errno),
        }
    }

    fn bind_to_loopback(&self, listener: &OwnedFd, n: &Notif) -> Option<Result<(), i32>> {
        let len = (n.data.args[2] as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        let requested = addr::parse(&notify::read_memory(n.pid, n.data.args[1], len).ok()?)?;
        if requested.port() == 0 || canonical_ip(requested.ip()).is_loopback() {
            return None;
        }
        let incoming = &self.network.incoming;
        let remote_port = incoming.remote_port(requested.port())?;
        let pidfd = notify::pidfd(n.pid).ok()?;
        let sock = notify::take_fd(&pidfd, n.data.args[0]).ok()?;
        // Invariant: act on the descriptor only while the call waits (see `connect`).
        if !notify::still_valid(listener, n.id)
            || notify::sockopt_int(&sock, libc::SOL_SOCKET, libc::SO_TYPE).ok()?
                != libc::SOCK_STREAM
        {
            return None;
        }
        let domain = notify::sockopt_int(&sock, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
        let loopback: std::net::IpAddr = if domain == libc::AF_INET6 {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        };
        let preferred = incoming
            .listen_port(remote_port)
            .unwrap_or(requested.port());
        let mut last = libc::EADDRINUSE;
        for port in [preferred, 0] {
            let sa = addr::encode(SocketAddr::new(loopback, port), domain);
            // SAFETY: `sa` holds a sockaddr of its own length.
            let r = unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    sa.as_ptr().cast(),
                    sa.len() as libc::socklen_t,
                )
            };
            if r == 0 {
                let bound = local_addr(&sock)?;
                let inode = notify::inode(&sock).ok()?;
                self.listeners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(inode, (remote_port, bound));
                tracing::debug!(%requested, %bound, remote_port, "seccomp: bind on loopback");
                return Some(Ok(()));
            }
            last = errno();
        }
        Some(Err(last))
    }

    fn listen(&self, listener: &OwnedFd, n: &Notif) {
        let Some((sock, remote_port, bound)) = self
            .our_listener(n)
            .filter(|_| notify::still_valid(listener, n.id))
        else {
            notify::proceed(listener, n.id);
            return;
        };
        // SAFETY: listen on our duplicate of the program's socket, with its backlog.
        if unsafe { libc::listen(sock.as_raw_fd(), n.data.args[1] as i32) } != 0 {
            notify::fail(listener, n.id, errno());
            return;
        }
        let request = LayerRequest::Listen {
            port: remote_port,
            local: bound,
        };
        match self.link.request(request) {
            Ok(ServerResponse::Done) => notify::succeed(listener, n.id, 0),
            other => {
                tracing::warn!("seccomp: cannot receive the pod's port {remote_port}: {other:?}");
                notify::fail(listener, n.id, libc::EADDRINUSE);
            }
        }
    }

    /// `accept` on a non-blocking listener the supervisor bound: the supervisor accepts, asks
    /// the session who the client really is (as the layer does), writes that address where the
    /// program wants it and installs the connection in the program. A blocking listener is left
    /// to the kernel (the supervisor never blocks on the program's behalf where a signal could
    /// abandon the call after a connection was taken), so its `accept` shows the session's
    /// loopback address.
    fn accept(&self, listener: &OwnedFd, n: &Notif, flags: i32) {
        let Some((sock, _, bound)) = self
            .our_listener(n)
            .filter(|_| notify::still_valid(listener, n.id))
        else {
            notify::proceed(listener, n.id);
            return;
        };
        // SAFETY: fcntl on our own duplicate.
        let status = unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_GETFL) };
        if status < 0 || status & libc::O_NONBLOCK == 0 {
            notify::proceed(listener, n.id);
            return;
        }
        // SAFETY: storage is plain data and large enough for any address.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: storage and len are valid; the new descriptor is ours until installed.
        let conn = unsafe {
            libc::accept4(
                sock.as_raw_fd(),
                &mut storage as *mut _ as *mut libc::sockaddr,
                &mut len,
                libc::SOCK_CLOEXEC | (flags & libc::SOCK_NONBLOCK),
            )
        };
        if conn < 0 {
            notify::fail(listener, n.id, errno());
            return;
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(conn) };
        // SAFETY: the kernel wrote `len` bytes of the storage.
        let source = addr::parse(unsafe {
            std::slice::from_raw_parts(&storage as *const _ as *const u8, len as usize)
        });
        let client = source.and_then(|source| {
            match self.link.request(LayerRequest::IncomingPeer {
                listener: bound,
                source,
            }) {
                Ok(ServerResponse::IncomingPeer(Some((client, _pod)))) => Some((client, source)),
                _ => None,
            }
        });
        let domain =
            notify::sockopt_int(&sock, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET);
        if let Some((client, source)) = client {
            if let Ok(inode) = notify::inode(&conn) {
                self.remember(inode, client, source);
            }
        }
        let shown = client.map(|(c, _)| c).or(source);
        if n.data.args[1] != 0 && n.data.args[2] != 0 {
            if let Some(shown) = shown {
                // A bad buffer is the program's own EFAULT, as with the kernel's accept.
                if write_sockaddr(
                    n.pid,
                    n.data.args[1],
                    n.data.args[2],
                    addr::encode(shown, domain),
                )
                .is_err()
                {
                    notify::fail(listener, n.id, libc::EFAULT);
                    return;
                }
            }
        }
        if let Err(e) =
            notify::reply_with_fd(listener, n.id, &conn, flags & libc::SOCK_CLOEXEC != 0)
        {
            // The caller is gone (or out of descriptors): the connection is closed with `conn`.
            notify::fail(listener, n.id, e.raw_os_error().unwrap_or(libc::EMFILE));
        }
    }

    fn our_listener(&self, n: &Notif) -> Option<(OwnedFd, u16, SocketAddr)> {
        let pidfd = notify::pidfd(n.pid).ok()?;
        let sock = notify::take_fd(&pidfd, n.data.args[0]).ok()?;
        let inode = notify::inode(&sock).ok()?;
        let (port, bound) = *self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&inode)?;
        // Invariant: an inode may be reused; only a socket still bound where we bound it is ours.
        if !addr::same(local_addr(&sock)?, bound) {
            return None;
        }
        Some((sock, port, bound))
    }

    // ---- unconnected UDP: sendto / recvfrom with an address ----

    fn sendto_call(self: Arc<Self>, listener: &Arc<OwnedFd>, n: Notif) {
        let len = (n.data.args[5] as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        let remote = notify::read_memory(n.pid, n.data.args[4], len)
            .ok()
            .and_then(|b| addr::parse(&b));
        let Some(remote) = remote.filter(|r| !leave_alone(*r)) else {
            notify::proceed(listener, n.id);
            return;
        };
        self.on_worker(listener, n, Overflow::Inline, move |this, listener, n| {
            this.sendto(listener, n, remote)
        });
    }

    /// A datagram to a cluster address from a socket that is not connected: sent by the
    /// supervisor from the program's socket to the session's relay for that address (the
    /// relay the layer would use), with the program's bytes.
    fn sendto(&self, listener: &OwnedFd, n: &Notif, remote: SocketAddr) {
        let Some((sock, inode, domain)) = self.udp_socket(listener, n) else {
            notify::proceed(listener, n.id);
            return;
        };
        let hostname = self.shared.hostname_of(remote.ip());
        let Plan::Udp { dns } = plan(&self.network, libc::SOCK_DGRAM, remote, hostname.as_deref())
        else {
            notify::proceed(listener, n.id);
            return;
        };
        let relay = match self.relay_for(inode, remote, dns) {
            Ok(r) => r,
            Err(e) => return notify::fail(listener, n.id, e),
        };
        let size = n.data.args[2] as usize;
        if size > MAX_DATAGRAM {
            return notify::fail(listener, n.id, libc::EMSGSIZE);
        }
        let Ok(data) = notify::read_memory(n.pid, n.data.args[1], size) else {
            return notify::fail(listener, n.id, libc::EFAULT);
        };
        let to = addr::encode(relay, domain);
        // SAFETY: data and `to` are valid for their lengths.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                n.data.args[3] as i32 | libc::MSG_NOSIGNAL,
                to.as_ptr().cast(),
                to.len() as libc::socklen_t,
            )
        };
        if sent < 0 {
            notify::fail(listener, n.id, errno());
        } else {
            notify::succeed(listener, n.id, sent as i64);
        }
    }

    /// The program's UDP socket (a duplicate), its inode and domain, if the call is still
    /// waiting.
    fn udp_socket(&self, listener: &OwnedFd, n: &Notif) -> Option<(OwnedFd, u64, i32)> {
        let pidfd = notify::pidfd(n.pid).ok()?;
        let sock = notify::take_fd(&pidfd, n.data.args[0]).ok()?;
        if !notify::still_valid(listener, n.id)
            || notify::sockopt_int(&sock, libc::SOL_SOCKET, libc::SO_TYPE).ok()? != libc::SOCK_DGRAM
        {
            return None;
        }
        let domain = notify::sockopt_int(&sock, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
        let inode = notify::inode(&sock).ok()?;
        Some((sock, inode, domain))
    }

    fn relay_for(&self, inode: u64, remote: SocketAddr, dns: bool) -> Result<SocketAddr, i32> {
        let known = self
            .udp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&inode)
            .and_then(|relays| {
                relays
                    .iter()
                    .find(|(r, _)| addr::same(*r, remote))
                    .map(|(_, relay)| *relay)
            });
        if let Some(relay) = known {
            return Ok(relay);
        }
        let relay = self.open_relay(remote, dns)?;
        let mut udp = self.udp.lock().unwrap_or_else(|p| p.into_inner());
        if udp.len() >= MAX_REDIRECTED {
            // Sockets are not seen closing; the table starts over rather than grow.
            udp.clear();
        }
        udp.entry(inode).or_default().push((remote, relay));
        Ok(relay)
    }

    fn recvfrom_call(self: Arc<Self>, listener: &Arc<OwnedFd>, n: Notif) {
        let relays = self
            .udp_socket(listener, &n)
            .and_then(|(sock, inode, domain)| {
                let relays = self
                    .udp
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&inode)?
                    .clone();
                Some((sock, relays, domain))
            });
        let Some((sock, relays, domain)) = relays else {
            notify::proceed(listener, n.id);
            return;
        };
        // SAFETY: fcntl on our own duplicate.
        let status = unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_GETFL) };
        let flags = n.data.args[3] as i32;
        if status >= 0 && (status & libc::O_NONBLOCK != 0 || flags & libc::MSG_DONTWAIT != 0) {
            self.receive(listener, &n, &sock, &relays, domain, None);
            return;
        }
        let timeout = receive_timeout(&sock);
        self.on_worker(listener, n, Overflow::Proceed, move |this, listener, n| {
            let deadline = Instant::now() + timeout.unwrap_or(Duration::from_secs(365 * 24 * 3600));
            this.receive(listener, n, &sock, &relays, domain, Some(deadline));
        });
    }

    /// Receives one datagram for the program: the relay's address is shown as the cluster
    /// address it stands for. `wait_until`: a blocking receive, which ends when the call is
    /// abandoned (a signal), a datagram arrives or `SO_RCVTIMEO` passes.
    fn receive(
        &self,
        listener: &OwnedFd,
        n: &Notif,
        sock: &OwnedFd,
        relays: &[(SocketAddr, SocketAddr)],
        domain: i32,
        wait_until: Option<Instant>,
    ) {
        let size = (n.data.args[2] as usize).min(MAX_DATAGRAM);
        let mut buf = vec![0u8; size];
        loop {
            if let Some(deadline) = wait_until {
                if !notify::still_valid(listener, n.id) {
                    return;
                }
                if Instant::now() >= deadline {
                    return notify::fail(listener, n.id, libc::EAGAIN);
                }
                let mut pfd = libc::pollfd {
                    fd: sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // Short waits: the call may be abandoned meanwhile (ID_VALID is polled).
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                    continue;
                }
            }
            // SAFETY: storage is plain data and large enough for any address.
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: buf, storage and len are valid for the call.
            let got = unsafe {
                libc::recvfrom(
                    sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    n.data.args[3] as i32 | libc::MSG_DONTWAIT,
                    &mut storage as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if got < 0 {
                let e = errno();
                if e == libc::EAGAIN && wait_until.is_some() {
                    continue;
                }
                return notify::fail(listener, n.id, e);
            }
            // SAFETY: the kernel wrote `len` bytes of the storage.
            let source = addr::parse(unsafe {
                std::slice::from_raw_parts(&storage as *const _ as *const u8, len as usize)
            });
            let shown = source.map(|s| {
                relays
                    .iter()
                    .find(|(_, relay)| addr::same(*relay, s))
                    .map_or(s, |(remote, _)| *remote)
            });
            let copied = (got as usize).min(buf.len());
            let wrote =
                notify::write_memory(n.pid, n.data.args[1], &buf[..copied]).and_then(|()| {
                    match shown {
                        Some(shown) if n.data.args[5] != 0 => write_sockaddr(
                            n.pid,
                            n.data.args[4],
                            n.data.args[5],
                            addr::encode(shown, domain),
                        ),
                        _ => Ok(()),
                    }
                });
            // The datagram is taken: a bad buffer is the program's EFAULT, as with the kernel.
            return match wrote {
                Ok(()) => notify::succeed(listener, n.id, got as i64),
                Err(_) => notify::fail(listener, n.id, libc::EFAULT),
            };
        }
    }

    // ---- connect ----

    fn connect_call(self: Arc<Self>, listener: &Arc<OwnedFd>, n: Notif) {
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

    /// Runs `work` on a thread of its own (a slow call must not hold up the others), or, when
    /// [`MAX_CONNECT_THREADS`] are busy, as `overflow` says.
    fn on_worker(
        self: Arc<Self>,
        listener: &Arc<OwnedFd>,
        n: Notif,
        overflow: Overflow,
        work: impl FnOnce(&Supervisor, &OwnedFd, &Notif) + Send + 'static,
    ) {
        let busy = self.connect_threads.fetch_add(1, Ordering::AcqRel);
        if busy >= MAX_CONNECT_THREADS {
            match overflow {
                Overflow::Inline => work(&self, listener, &n),
                Overflow::Proceed => notify::proceed(listener, n.id),
            }
            self.connect_threads.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let listener_copy = listener.clone();
        let this = self.clone();
        let work = std::sync::Arc::new(std::sync::Mutex::new(Some(work)));
        let work_copy = work.clone();
        let spawned = std::thread::Builder::new()
            .name("mirrord-seccomp-call".into())
            .spawn(move || {
                let job = work_copy.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(job) = job {
                    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job(&this, &listener_copy, &n)
                    }));
                    if done.is_err() {
                        tracing::error!("seccomp: a handler panicked; the call continues");
                        // Harmless if the call was answered before the panic (ENOENT).
                        notify::proceed(&listener_copy, n.id);
                    }
                }
                this.connect_threads.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            tracing::warn!("seccomp: no thread for a call ({e})");
            let job = work.lock().unwrap_or_else(|p| p.into_inner()).take();
            match (job, overflow) {
                (Some(job), Overflow::Inline) => job(&self, listener, &n),
                _ => notify::proceed(listener, n.id),
            }
            self.connect_threads.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn connect(&self, listener: &OwnedFd, n: &Notif, remote: SocketAddr) {
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
    fn connect_tcp(
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

    /// A UDP socket is connected to a relay of the session (the one the layer would get).
    fn connect_udp(
        &self,
        sock: &OwnedFd,
        domain: i32,
        remote: SocketAddr,
        dns: bool,
    ) -> Result<SocketAddr, i32> {
        let relay = self.open_relay(remote, dns)?;
        connect_fd(sock, relay, domain, Instant::now() + REPLY_TIMEOUT)?;
        Ok(relay)
    }

    /// A relay of the session for datagrams to `remote` (`UdpOpen`, as the layer asks).
    fn open_relay(&self, remote: SocketAddr, dns: bool) -> Result<SocketAddr, i32> {
        let request = LayerRequest::UdpOpen {
            remote: SocketAddr::new(canonical_ip(remote.ip()), remote.port()),
            dns,
        };
        match self.link.request(request) {
            Ok(ServerResponse::UdpOpened {
                relay: Some(relay),
                reply: UdpOpenReply::Opened { .. },
            }) => Ok(relay),
            Ok(ServerResponse::UdpOpened {
                reply: UdpOpenReply::Failed { errno },
                ..
            }) => Err(errno),
            Ok(_) => Err(libc::EPROTO),
            Err(e) => {
                tracing::warn!("seccomp: cannot reach the session: {e}");
                Err(libc::ENETUNREACH)
            }
        }
    }
}

/// Invariant: loopback stays local for the supervisor. The layer turns the connects and sends
/// it handles into ones to loopback (data listeners, UDP relays) before the syscall, so this is
/// what keeps a call from being handled twice. DNS datagrams are the exception, as in the
/// layer: port 53 anywhere means the pod's nameserver (relays never use port 53).
fn leave_alone(remote: SocketAddr) -> bool {
    let ip = canonical_ip(remote.ip());
    ip.is_unspecified() || (ip.is_loopback() && remote.port() != 53)
}

/// `SO_RCVTIMEO` of the socket, if set.
fn receive_timeout(sock: &OwnedFd) -> Option<Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: tv and len are valid for the call.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &mut tv as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    let d = Duration::new(tv.tv_sec.max(0) as u64, (tv.tv_usec.max(0) as u32) * 1000);
    (r == 0 && !d.is_zero()).then_some(d)
}

fn accept_syscall(nr: i64) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        nr == libc::SYS_accept
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = nr;
        false
    }
}

fn open_syscall(nr: i64) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        nr == libc::SYS_open
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = nr;
        false
    }
}

/// The same decisions as the layer's (`feature.network.outgoing`, `dns`), except that loopback
/// was left alone before (see `connect_call`). Name rules of an outgoing filter see the name
/// the session last resolved to that address (a layer's lookup, so a program the layer routed
/// locally by name is routed locally here too); a lookup the program made itself over DNS
/// datagrams gives no name.
fn plan(
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

fn memfd_with(content: &[u8]) -> std::io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    // SAFETY: the name is a valid C string; memfd_create returns a new descriptor or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"mirrord-target-file".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.write_all(content)?;
    file.rewind()?;
    // The program gets a read-only view of the target's file.
    // SAFETY: fcntl on our own descriptor.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_ADD_SEALS,
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
        )
    };
    Ok(OwnedFd::from(file))
}

/// Writes a sockaddr where `getpeername` asked for it: truncated to the program's buffer, with
/// the full length in `*len_ptr`, as the kernel does.
fn write_sockaddr(tid: u32, addr_ptr: u64, len_ptr: u64, sa: Vec<u8>) -> std::io::Result<()> {
    let len_bytes = notify::read_memory(tid, len_ptr, 4)?;
    let room =
        u32::from_ne_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    notify::write_memory(tid, addr_ptr, &sa[..room.min(sa.len())])?;
    notify::write_memory(tid, len_ptr, &(sa.len() as u32).to_ne_bytes())
}

/// The address our duplicate of the socket is bound to.
fn local_addr(sock: &OwnedFd) -> Option<SocketAddr> {
    // SAFETY: storage is plain data and large enough for any address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len are valid for the call.
    let r = unsafe {
        libc::getsockname(
            sock.as_raw_fd(),
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: the kernel wrote `len` bytes of the storage.
    let bytes =
        unsafe { std::slice::from_raw_parts(&storage as *const _ as *const u8, len as usize) };
    addr::parse(bytes)
}

/// The peer our duplicate of the socket really has.
fn real_peer(sock: &OwnedFd) -> Option<SocketAddr> {
    // SAFETY: storage is plain data and large enough for any address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len are valid for the call.
    let r = unsafe {
        libc::getpeername(
            sock.as_raw_fd(),
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: the kernel wrote `len` bytes of the storage.
    let bytes =
        unsafe { std::slice::from_raw_parts(&storage as *const _ as *const u8, len as usize) };
    addr::parse(bytes)
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Waits until `sock` is ready for `events` or the deadline passes.
fn wait(sock: &OwnedFd, events: i16, deadline: Instant) -> Result<(), i32> {
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
fn connect_fd(sock: &OwnedFd, to: SocketAddr, domain: i32, deadline: Instant) -> Result<(), i32> {
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
fn disconnect(sock: &OwnedFd) {
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

fn write_all(sock: &OwnedFd, mut buf: &[u8], deadline: Instant) -> Result<(), i32> {
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
fn read_exact(sock: &OwnedFd, mut buf: &mut [u8], deadline: Instant) -> Result<(), i32> {
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

fn read_reply(sock: &OwnedFd, deadline: Instant) -> Result<ConnectReply, i32> {
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
