//! The table of sockets the layer manages, keyed by file descriptor.
//!
//! Descriptors made by `dup*`/`fcntl(F_DUPFD*)` share one entry, as they share one socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug)]
pub enum Managed {
    /// An outgoing TCP connection carried through the pod.
    Tcp {
        /// The address the program connected to, as it gave it.
        remote: SocketAddr,
        state: TcpState,
    },
    /// A listening socket whose port is subscribed in the pod. The program asked for
    /// `requested`; the socket is really bound at `bound` on loopback.
    Listener {
        requested: SocketAddr,
        bound: SocketAddr,
        remote_port: u16,
        subscribed: bool,
    },
    /// A connection accepted from a subscribed listener: `peer` is the client in the cluster,
    /// `local` the pod address it connected to.
    Incoming { peer: SocketAddr, local: SocketAddr },
    /// A UDP socket with datagrams to cluster destinations, each through a loopback relay.
    Udp {
        /// (cluster destination, relay address on loopback)
        relays: Vec<(SocketAddr, SocketAddr)>,
        /// Destination of `connect`, if the program connected the socket.
        connected: Option<SocketAddr>,
    },
}

/// Where an outgoing TCP connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// A non-blocking connect whose pod-side outcome has not arrived (see `pending`).
    Connecting,
    /// Connected in the pod; `local` is the socket's address on the pod's side.
    /// `reported`: whether a `connect` call already said so. The kernel answers the first
    /// `connect` after a non-blocking connect completed with 0, later ones with `EISCONN`.
    Connected { local: SocketAddr, reported: bool },
    /// The connect failed in the pod; reported once through `SO_ERROR` or a second `connect`.
    Failed(i32),
}

pub type Entry = Arc<Mutex<Managed>>;

/// Lock order: the table before any entry; two entries are held together only by `fork`, which
/// takes them in table order with the table held (nobody else holds an entry while taking the
/// table, or another entry).
static TABLE: Mutex<Option<HashMap<i32, Entry>>> = Mutex::new(None);

pub fn lock() -> MutexGuard<'static, Option<HashMap<i32, Entry>>> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn get(fd: i32) -> Option<Entry> {
    lock().as_ref().and_then(|t| t.get(&fd).cloned())
}

pub fn insert(fd: i32, entry: Entry) {
    lock().get_or_insert_with(HashMap::new).insert(fd, entry);
}

pub fn remove(fd: i32) -> Option<Entry> {
    lock().as_mut().and_then(|t| t.remove(&fd))
}

/// `new_fd` now refers to the same socket as `old_fd`.
pub fn duplicate(old_fd: i32, new_fd: i32) {
    let mut guard = lock();
    let table = guard.get_or_insert_with(HashMap::new);
    match table.get(&old_fd).cloned() {
        Some(e) => {
            table.insert(new_fd, e);
        }
        None => {
            table.remove(&new_fd);
        }
    }
}

/// Whether any other descriptor still refers to this entry's socket.
pub fn still_referenced(entry: &Entry) -> bool {
    // The table holds one reference per descriptor; the caller holds one more.
    Arc::strong_count(entry) > 1
}

pub fn lock_entry(e: &Entry) -> MutexGuard<'_, Managed> {
    e.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every distinct entry, locked, for the fork hook (with the table lock held by the caller).
pub fn lock_all<'a>(table: &'a Option<HashMap<i32, Entry>>) -> Vec<MutexGuard<'a, Managed>> {
    let mut seen = std::collections::HashSet::new();
    let mut guards = Vec::new();
    for e in table.iter().flat_map(|t| t.values()) {
        if seen.insert(Arc::as_ptr(e) as usize) {
            guards.push(lock_entry(e));
        }
    }
    guards
}
