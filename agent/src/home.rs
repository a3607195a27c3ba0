//! Sockets in the namespace the agent started in (the developer machine's), made after the
//! agent moved into the target's.
//!
//! A socket keeps the network namespace it was made in, and `setns` moves only the calling
//! thread. So the agent keeps a handle on its first namespace (opened before it entered the
//! target), and a thread per address family that moved back there makes sockets ahead of need.
//! An incoming connection for a program on the developer machine (see `incoming::deliver`)
//! then takes a ready socket and connects to the program's loopback listener itself, instead of
//! waiting for the session to fetch the connection and relay it.

use anyhow::{Context, Result};
use std::os::fd::OwnedFd;
use tokio::sync::{mpsc, Mutex};

/// Sockets kept ready per family: enough for a burst of new connections.
const READY: usize = 64;
/// A thread refills its pool once this few are left, so it wakes once per `READY - REFILL_AT`
/// connections rather than once per connection (a wake-up is a cross-CPU interrupt on the
/// machine the agent shares with the target).
const REFILL_AT: usize = READY / 2;

/// The agent's first network namespace, opened before `setns` moved the agent.
pub struct HomeNamespace(OwnedFd);

impl HomeNamespace {
    /// Opens the calling thread's network namespace; call it before entering the target.
    pub fn current() -> Result<HomeNamespace> {
        let file = std::fs::File::open("/proc/thread-self/ns/net")
            .context("opening the agent's own network namespace")?;
        Ok(HomeNamespace(file.into()))
    }
}

/// Ready TCP sockets of the home namespace, IPv4 and IPv6.
pub struct HomeSockets {
    v4: Pool,
    v6: Pool,
}

struct Pool {
    /// maker thread --unconnected sockets--> deliveries
    socket_rx: Mutex<mpsc::Receiver<OwnedFd>>,
    /// deliveries --"the pool is low"--> maker thread
    low_tx: std::sync::mpsc::SyncSender<()>,
}

impl HomeSockets {
    /// Starts the makers. Fails when a thread cannot go back to `home` (no `CAP_SYS_ADMIN`).
    pub fn start(home: HomeNamespace) -> Result<HomeSockets> {
        let home = std::sync::Arc::new(home);
        let mut pools = Vec::new();
        for (family, name) in [
            (socket2::Domain::IPV4, "mirrord-home4"),
            (socket2::Domain::IPV6, "mirrord-home6"),
        ] {
            let (socket_tx, socket_rx) = mpsc::channel(READY);
            let (low_tx, low_rx) = std::sync::mpsc::sync_channel::<()>(1);
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<()>>(1);
            let home = home.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let entered = nix::sched::setns(&home.0, nix::sched::CloneFlags::CLONE_NEWNET)
                        .context("moving a thread back to the agent's own network namespace");
                    let ok = entered.is_ok();
                    let _ = ready_tx.send(entered);
                    if ok {
                        make_sockets(family, socket_tx, low_rx);
                    }
                })
                .context("starting a socket maker thread")?;
            // The thread always answers before it does anything else.
            ready_rx
                .recv()
                .context("the socket maker thread died at start")??;
            pools.push(Pool {
                socket_rx: Mutex::new(socket_rx),
                low_tx,
            });
        }
        let v6 = pools.pop().expect("two pools were pushed");
        let v4 = pools.pop().expect("two pools were pushed");
        Ok(HomeSockets { v4, v6 })
    }

    /// A new TCP socket of the home namespace for an address of `to`'s family.
    pub async fn socket_for(&self, to: std::net::SocketAddr) -> Result<tokio::net::TcpSocket> {
        let pool = if to.is_ipv4() { &self.v4 } else { &self.v6 };
        let mut socket_rx = pool.socket_rx.lock().await;
        let fd = socket_rx
            .recv()
            .await
            .context("the socket maker thread is gone")?;
        if socket_rx.len() <= REFILL_AT {
            // Full: a wake-up is already pending. Disconnected: the next recv says so.
            let _ = pool.low_tx.try_send(());
        }
        Ok(tokio::net::TcpSocket::from_std_stream(
            std::net::TcpStream::from(fd),
        ))
    }
}

/// Fills the pool, sleeps until it is low, and again, until nobody takes sockets any more (the
/// agent is exiting).
fn make_sockets(
    family: socket2::Domain,
    socket_tx: mpsc::Sender<OwnedFd>,
    low_rx: std::sync::mpsc::Receiver<()>,
) {
    // A socket made while the pool was full, kept for the next fill.
    let mut spare: Option<OwnedFd> = None;
    loop {
        let fd = match spare.take() {
            Some(fd) => fd,
            None => match socket2::Socket::new(family, socket2::Type::STREAM.nonblocking(), None) {
                Ok(s) => s.into(),
                Err(e) => {
                    // Out of descriptors, most likely: deliveries wait (each within its own
                    // timeout) rather than fail at once.
                    tracing::warn!("making a socket for deliveries: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            },
        };
        match socket_tx.try_send(fd) {
            Ok(()) => {}
            // Invariant: the thread sleeps only on a full pool, and a delivery that leaves it
            // at REFILL_AT or fewer always leaves a wake-up pending, so a delivery waiting on
            // an empty pool always has a thread filling it.
            Err(mpsc::error::TrySendError::Full(fd)) => {
                spare = Some(fd);
                if low_rx.recv().is_err() {
                    return;
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
