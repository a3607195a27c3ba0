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
use mirrord_protocol::net::DeliverySource;
use std::net::SocketAddr;
use std::time::Duration;

/// Bound on taking a socket, telling the session and connecting to the program's listener.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Client addresses given an index (see `DeliverySource`); later clients take the slow way.
const MAX_INDEXES: u32 = 1 << 16;

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

    /// The source to deliver a connection from `peer` to `local` from, when the program listens
    /// on IPv4 loopback at `to`: one index per (client IP, pod IP), never reused; true when
    /// the index is new.
    fn delivery_source(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        to: SocketAddr,
    ) -> Option<(DeliverySource, bool)> {
        if !to.is_ipv4() {
            return None;
        }
        let mut indexes = super::lock(&self.source_indexes);
        let next = u32::try_from(indexes.len()).ok()? + 1;
        let (index, new) = match indexes.get(&(peer.ip(), local.ip())) {
            Some(i) => (*i, false),
            None if next <= MAX_INDEXES => {
                indexes.insert((peer.ip(), local.ip()), next);
                (next, true)
            }
            None => return None,
        };
        Some((
            DeliverySource {
                index,
                port: peer.port(),
            },
            new,
        ))
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
        self.channel_for(client, port, TrafficMode::Steal, peer, local)
            .await
            .map(|(stream, _)| stream)
    }

    /// A stream to `client` for one connection of `port` (stolen, or a mirrored copy), and
    /// whether it goes straight to the program (else through the session, which then shows
    /// its requests in the traffic view itself).
    pub(super) async fn channel_for(
        &self,
        client: &Client,
        port: u16,
        mode: TrafficMode,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<(BoxIo, bool)> {
        // A connection served since before its client went (a keep-alive one asking again).
        if client.gone.is_set() {
            return None;
        }
        let to = super::lock(&self.direct).get(&(client.id, port)).copied();
        if let (Some(to), Some(home)) = (to, &self.home) {
            let at = Destination { port, to, mode };
            let delivered = tokio::time::timeout(
                DELIVERY_TIMEOUT,
                deliver(self, home, client, at, peer, local),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            match delivered {
                Ok(stream) => return Some((stream, true)),
                Err(e) => tracing::debug!(port, %to, "delivering it directly failed: {e:#}"),
            }
        }
        self.announce(client, port, mode, peer, local)
            .await
            .map(|stream| (stream, false))
    }
}

/// Where a delivery goes: the program's listener `to`, for the pod's `port`.
struct Destination {
    port: u16,
    to: SocketAddr,
    mode: TrafficMode,
}

async fn deliver(
    incoming: &IncomingState,
    home: &crate::home::HomeSockets,
    client: &Client,
    Destination { port, to, mode }: Destination,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<BoxIo> {
    let socket = home.socket_for(to).await?;
    // A source that tells the program's layer who the client is without asking the session
    // (`DeliverySource`); taken (a connection from the same client port still in TIME_WAIT,
    // an IPv6 listener, too many clients), any loopback port does, and the layer asks.
    let _ = socket.set_reuseaddr(true);
    let told = incoming
        .delivery_source(peer, local, to)
        .filter(|(s, _)| socket.bind(SocketAddr::V4(s.address())).is_ok());
    if told.is_none() {
        socket
            .bind(SocketAddr::new(to.ip(), 0))
            .context("binding on the developer machine's loopback")?;
    }
    let source = socket.local_addr()?;
    let delivered = AgentMessage::Event(AgentEvent::Delivered {
        port,
        mode,
        peer,
        local,
        source,
    });
    match told {
        // The layer already knows this client from an earlier connection: the event is only
        // for the traffic view, and a layer that does not know it yet (another process)
        // finds it through the session's catch-up (see `IncomingRouter::peer_of`).
        Some((_, false)) => {
            client.traffic_tx.send(delivered);
        }
        _ => {
            client
                .message_tx
                .send(delivered)
                .await
                .context("the session's control channel is gone")?;
            // Lets the control channel's writer (just woken) put the event on the wire before
            // the program can accept: the session then rarely has to wait for it.
            tokio::task::yield_now().await;
        }
    }
    let stream = socket
        .connect(to)
        .await
        .with_context(|| format!("connecting to the program's listener {to}"))?;
    let _ = stream.set_nodelay(true);
    Ok(Box::new(stream))
}
