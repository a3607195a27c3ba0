//! How a stolen connection reaches its client: delivered by the agent itself, or announced.
//!
//! A local agent (one started on the developer machine, see `home`) can connect to the program's
//! loopback listener itself: the session says where it is (`DeliverTo`), the agent takes a
//! socket of its home namespace, tells the session which source address carries which cluster
//! client (`Delivered`, before the connect, so the program's `accept` can learn it), and
//! connects. The connection then crosses one relay (this agent) instead of two, and a new one
//! needs no round trip through the session. Anything else (no home sockets, no `DeliverTo`, a
//! failed connect) announces the connection and waits for the session's channel, as before.

use super::{BoxIo, Client, IncomingState};
use anyhow::{Context, Result};
use mirrord_protocol::agent::{AgentEvent, AgentMessage, TrafficMode};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Bound on taking a socket, telling the session and connecting to the program's listener.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);

impl IncomingState {
    /// The session's `DeliverTo` for `port`.
    pub fn deliver_to(&self, client: u64, port: u16, to: Option<SocketAddr>) {
        let mut direct = super::lock(&self.direct);
        match to {
            Some(to) if self.home.is_some() => {
                direct.insert((client, port), to);
            }
            Some(_) => tracing::debug!(port, "no home sockets: announcing instead"),
            None => {
                direct.remove(&(client, port));
            }
        }
    }

    /// Forgets where `client` wanted `port` (or every port, for `None`) delivered.
    pub(super) fn forget_deliveries(&self, client: u64, port: Option<u16>) {
        super::lock(&self.direct).retain(|(c, p), _| *c != client || port.is_some_and(|q| q != *p));
    }

    /// A stream to the stealing `client` for one connection of `port` from `peer` to `local`.
    pub(super) async fn stolen_channel(
        &self,
        client: &Client,
        port: u16,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<BoxIo> {
        let to = super::lock(&self.direct).get(&(client.id, port)).copied();
        if let (Some(to), Some(home)) = (to, &self.home) {
            let delivered =
                tokio::time::timeout(DELIVERY_TIMEOUT, deliver(home, client, port, to, peer, local))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            match delivered {
                Ok(stream) => return Some(stream),
                Err(e) => tracing::debug!(port, %to, "delivering it directly failed: {e:#}"),
            }
        }
        self.announce(client, port, TrafficMode::Steal, peer, local)
            .await
    }
}

async fn deliver(
    home: &crate::home::HomeSockets,
    client: &Client,
    port: u16,
    to: SocketAddr,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<BoxIo> {
    let socket = home.socket_for(to).await?;
    socket
        .bind(SocketAddr::new(to.ip(), 0))
        .context("binding on the developer machine's loopback")?;
    let source = socket.local_addr()?;
    client
        .message_tx
        .send(AgentMessage::Event(AgentEvent::Delivered {
            port,
            peer,
            local,
            source,
        }))
        .await
        .context("the session's control channel is gone")?;
    // From here on the session has an entry for `source`; the guard removes it however this
    // ends.
    let ended = Ended {
        source,
        event_tx: client.message_tx.clone(),
    };
    let stream = socket
        .connect(to)
        .await
        .with_context(|| format!("connecting to the program's listener {to}"))?;
    let _ = stream.set_nodelay(true);
    Ok(Box::new(Delivered {
        stream,
        _ended: ended,
    }))
}

/// Tells the session that the delivery from `source` is over, when dropped.
struct Ended {
    source: SocketAddr,
    /// delivery --DeliveryEnded--> the session's control channel writer
    event_tx: mpsc::Sender<AgentMessage>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        // try_send: a drop cannot wait. A full queue loses the message; the session then keeps
        // a stale entry until the program accepts it or the source port is reused.
        let _ = self
            .event_tx
            .try_send(AgentMessage::Event(AgentEvent::DeliveryEnded {
                source: self.source,
            }));
    }
}

/// A connection to the program that says when it ends.
struct Delivered {
    stream: TcpStream,
    _ended: Ended,
}

impl AsyncRead for Delivered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Delivered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
