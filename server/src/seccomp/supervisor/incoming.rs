//! `bind`, `listen` and `accept` of servers the layer cannot see (incoming traffic).

use super::super::addr;
use super::super::notify::{self, Notif};
use super::peers::{local_addr, write_sockaddr};
use super::*;

impl Supervisor {
    /// As the layer does: a TCP socket bound to a port of every address (or a non-loopback
    /// one) is bound to loopback instead (same port if free), and its `listen` subscribes the
    /// pod's port. Invariant: the layer binds the sockets it handles to loopback itself and the
    /// supervisor leaves loopback binds alone, so no port is subscribed twice.
    pub(super) fn bind(&self, listener: &OwnedFd, n: &Notif) {
        match self.bind_to_loopback(listener, n) {
            None => notify::proceed(listener, n.id),
            Some(Ok(())) => notify::succeed(listener, n.id, 0),
            Some(Err(errno)) => notify::fail(listener, n.id, errno),
        }
    }

    pub(super) fn bind_to_loopback(
        &self,
        listener: &OwnedFd,
        n: &Notif,
    ) -> Option<Result<(), i32>> {
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

    pub(super) fn listen(&self, listener: &OwnedFd, n: &Notif) {
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
    pub(super) fn accept(&self, listener: &OwnedFd, n: &Notif, flags: i32) {
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

    pub(super) fn our_listener(&self, n: &Notif) -> Option<(OwnedFd, u16, SocketAddr)> {
        // The common case (a program the layer serves, or one that binds nothing of the pod's)
        // answers without taking the descriptor: three system calls less per accept.
        if self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return None;
        }
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
}
