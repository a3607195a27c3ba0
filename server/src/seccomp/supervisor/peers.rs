//! `getpeername` of redirected sockets, and the socket-address helpers the others share.

use super::super::addr;
use super::super::notify::{self, Notif};
use super::*;

impl Supervisor {
    pub(super) fn getpeername(&self, listener: &OwnedFd, n: &Notif) {
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
    pub(super) fn peer_of(&self, n: &Notif) -> Option<(i32, SocketAddr)> {
        // Nothing redirected (the layer did the program's connects): nothing to look up.
        if self
            .redirected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_inode
            .is_empty()
        {
            return None;
        }
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

    pub(super) fn remember(&self, inode: u64, remote: SocketAddr, via: SocketAddr) {
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
}

/// Writes a sockaddr where `getpeername` asked for it: truncated to the program's buffer, with
/// the full length in `*len_ptr`, as the kernel does.
pub(super) fn write_sockaddr(
    tid: u32,
    addr_ptr: u64,
    len_ptr: u64,
    sa: Vec<u8>,
) -> std::io::Result<()> {
    let len_bytes = notify::read_memory(tid, len_ptr, 4)?;
    let room =
        u32::from_ne_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    notify::write_memory(tid, addr_ptr, &sa[..room.min(sa.len())])?;
    notify::write_memory(tid, len_ptr, &(sa.len() as u32).to_ne_bytes())
}

/// The address our duplicate of the socket is bound to.
pub(super) fn local_addr(sock: &OwnedFd) -> Option<SocketAddr> {
    socket_address(sock, libc::getsockname)
}

/// The peer our duplicate of the socket really has.
pub(super) fn real_peer(sock: &OwnedFd) -> Option<SocketAddr> {
    socket_address(sock, libc::getpeername)
}

/// One of the socket's own addresses, from `getsockname` or `getpeername`.
fn socket_address(
    sock: &OwnedFd,
    call: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> libc::c_int,
) -> Option<SocketAddr> {
    // SAFETY: storage is plain data and large enough for any address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len are valid for the call.
    let r = unsafe {
        call(
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
