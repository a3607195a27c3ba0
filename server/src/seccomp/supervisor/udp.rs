//! UDP through the session's relays: connected sockets, and `sendto`/`recvfrom` with an
//! address on sockets that are not connected.

use super::super::addr;
use super::super::notify::{self, Notif};
use super::outgoing::{connect_fd, leave_alone, plan};
use super::peers::write_sockaddr;
use super::*;

impl Supervisor {
    pub(super) fn sendto_call(self: Arc<Self>, listener: &Arc<OwnedFd>, n: Notif) {
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
    pub(super) fn sendto(&self, listener: &OwnedFd, n: &Notif, remote: SocketAddr) {
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
    pub(super) fn udp_socket(&self, listener: &OwnedFd, n: &Notif) -> Option<(OwnedFd, u64, i32)> {
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

    pub(super) fn relay_for(
        &self,
        inode: u64,
        remote: SocketAddr,
        dns: bool,
    ) -> Result<SocketAddr, i32> {
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

    pub(super) fn recvfrom_call(self: Arc<Self>, listener: &Arc<OwnedFd>, n: Notif) {
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
    pub(super) fn receive(
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

    /// A UDP socket is connected to a relay of the session (the one the layer would get).
    pub(super) fn connect_udp(
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
    pub(super) fn open_relay(&self, remote: SocketAddr, dns: bool) -> Result<SocketAddr, i32> {
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

/// `SO_RCVTIMEO` of the socket, if set.
pub(super) fn receive_timeout(sock: &OwnedFd) -> Option<Duration> {
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
