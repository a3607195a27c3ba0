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

/// Sockets kept ready per family: enough for a burst of new connections; the threads refill
/// the pool as it drains.
const READY: usize = 16;

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
    /// maker thread (v4) --unconnected sockets--> deliveries
    v4_rx: Mutex<mpsc::Receiver<OwnedFd>>,
    /// maker thread (v6) --unconnected sockets--> deliveries
    v6_rx: Mutex<mpsc::Receiver<OwnedFd>>,
}

impl HomeSockets {
    /// Starts the makers. Fails when a thread cannot go back to `home` (no `CAP_SYS_ADMIN`).
    pub fn start(home: HomeNamespace) -> Result<HomeSockets> {
        let home = std::sync::Arc::new(home);
        let mut receivers = Vec::new();
        for (family, name) in [
            (socket2::Domain::IPV4, "mirrord-home4"),
            (socket2::Domain::IPV6, "mirrord-home6"),
        ] {
            let (socket_tx, socket_rx) = mpsc::channel(READY);
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
                        make_sockets(family, socket_tx);
                    }
                })
                .context("starting a socket maker thread")?;
            // The thread always answers before it does anything else.
            ready_rx
                .recv()
                .context("the socket maker thread died at start")??;
            receivers.push(socket_rx);
        }
        let v6_rx = receivers.pop().expect("two receivers were pushed");
        let v4_rx = receivers.pop().expect("two receivers were pushed");
        Ok(HomeSockets {
            v4_rx: Mutex::new(v4_rx),
            v6_rx: Mutex::new(v6_rx),
        })
    }

    /// A new TCP socket of the home namespace for an address of `to`'s family.
    pub async fn socket_for(&self, to: std::net::SocketAddr) -> Result<tokio::net::TcpSocket> {
        let rx = if to.is_ipv4() {
            &self.v4_rx
        } else {
            &self.v6_rx
        };
        let fd = rx
            .lock()
            .await
            .recv()
            .await
            .context("the socket maker thread is gone")?;
        Ok(tokio::net::TcpSocket::from_std_stream(
            std::net::TcpStream::from(fd),
        ))
    }
}

/// Makes sockets until nobody takes them any more (the agent is exiting).
fn make_sockets(family: socket2::Domain, socket_tx: mpsc::Sender<OwnedFd>) {
    loop {
        let socket = socket2::Socket::new(family, socket2::Type::STREAM.nonblocking(), None);
        match socket {
            Ok(s) => {
                if socket_tx.blocking_send(s.into()).is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of descriptors, most likely: deliveries wait (each within its own
                // timeout) rather than fail at once.
                tracing::warn!("making a socket for deliveries: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
