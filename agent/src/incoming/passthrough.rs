//! Pass-through: a connection nobody steals goes on (to the next agent, else the target) while
//! mirrors get a copy of the client's bytes and observers (dump) both directions.

use super::{BoxIo, Hop, IncomingState, Subscriber};
use anyhow::Result;
use bytes::Bytes;
use mirrord_protocol::agent::{Observed, TrafficMode};
use mirrord_protocol::codec::write_frame_async;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Chunks queued per mirroring client; a client that falls further behind loses its copy
/// rather than slowing the target.
const MIRROR_QUEUE: usize = 256;

impl IncomingState {
    /// The connection goes on (to the next agent or its original destination); mirrors get a
    /// copy of what the client sends (and whatever they answer is discarded); observers get
    /// both directions as `Observed` frames.
    pub(super) async fn pass_through(
        self: &Arc<Self>,
        stream: BoxIo,
        hop: Hop,
        mirrors: &[Subscriber],
    ) -> Result<()> {
        let upstream = self
            .next_hop(hop.port, hop.peer, hop.original, &hop.visited)
            .await?;
        self.relay(stream, upstream, &hop, mirrors).await
    }

    /// Announces one connection to every mirroring and observing subscriber in `mirrors` and
    /// returns the queues of their copies (each drained by its own task into the subscriber's
    /// channel). Fed by the relay below and by packet capture (`capture`) alike.
    pub(super) fn copy_sinks(
        self: &Arc<Self>,
        mirrors: &[Subscriber],
        peer: SocketAddr,
        original: SocketAddr,
        port: u16,
    ) -> CopySinks {
        let mut copies: Vec<mpsc::Sender<Bytes>> = Vec::new();
        let mut observers: Vec<mpsc::Sender<(bool, Bytes)>> = Vec::new();
        for m in mirrors {
            let me = self.clone();
            let client = m.client.clone();
            if m.mode == TrafficMode::Observe {
                let (observed_tx, mut observed_rx) = mpsc::channel::<(bool, Bytes)>(MIRROR_QUEUE);
                observers.push(observed_tx);
                tokio::spawn(async move {
                    let Some(mut channel) = me
                        .announce(&client, port, TrafficMode::Observe, peer, original)
                        .await
                    else {
                        return;
                    };
                    while let Some((from_client, data)) = observed_rx.recv().await {
                        let frame = Observed {
                            from_client,
                            data: data.to_vec(),
                        };
                        if write_frame_async(&mut channel, &frame).await.is_err() {
                            return;
                        }
                    }
                });
                continue;
            }
            let (copy_tx, mut copy_rx) = mpsc::channel::<Bytes>(MIRROR_QUEUE);
            copies.push(copy_tx);
            tokio::spawn(async move {
                let Some((channel, direct)) = me
                    .channel_for(&client, port, TrafficMode::Mirror, peer, original)
                    .await
                else {
                    return;
                };
                // A copy that bypasses the session is shown in the traffic view from here.
                let (mut requests, mut answers) = match direct {
                    true => {
                        let (r, a) = super::mirror_view::view(port, client.traffic_tx.clone());
                        (Some(r), Some(a))
                    }
                    false => (None, None),
                };
                let (mut drain, mut write) = tokio::io::split(channel);
                // Whatever the mirroring program answers goes nowhere (but to the view).
                tokio::spawn(async move {
                    let mut sink = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = drain.read(&mut sink).await {
                        if let Some(a) = &mut answers {
                            a.feed(&sink[..n]);
                        }
                    }
                });
                while let Some(chunk) = copy_rx.recv().await {
                    if write.write_all(&chunk).await.is_err() {
                        return;
                    }
                    if let Some(r) = &mut requests {
                        r.feed(&chunk);
                    }
                }
                let _ = write.shutdown().await;
            });
        }
        CopySinks { copies, observers }
    }

    /// Relays a connection and its `upstream` (the next agent or the target) with the copies
    /// for `mirrors` (see [`Self::pass_through`]).
    pub(super) async fn relay(
        self: &Arc<Self>,
        stream: BoxIo,
        upstream: BoxIo,
        hop: &Hop,
        mirrors: &[Subscriber],
    ) -> Result<()> {
        let CopySinks {
            mut copies,
            mut observers,
        } = self.copy_sinks(mirrors, hop.peer, hop.original, hop.port);
        let mut response_observers = observers.clone();
        let (mut client_r, mut client_w) = tokio::io::split(stream);
        let (mut up_r, mut up_w) = tokio::io::split(upstream);
        let to_target = async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if up_w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                if !copies.is_empty() || !observers.is_empty() {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    // try_send: a slow mirror loses its copy instead of slowing the target.
                    copies.retain(|c| c.try_send(chunk.clone()).is_ok());
                    observers.retain(|o| o.try_send((true, chunk.clone())).is_ok());
                }
            }
            for o in &observers {
                let _ = o.try_send((true, Bytes::new()));
            }
            let _ = up_w.shutdown().await;
        };
        let from_target = async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match up_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if client_w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                if !response_observers.is_empty() {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    response_observers.retain(|o| o.try_send((false, chunk.clone())).is_ok());
                }
            }
            for o in &response_observers {
                let _ = o.try_send((false, Bytes::new()));
            }
            let _ = client_w.shutdown().await;
        };
        tokio::join!(to_target, from_target);
        Ok(())
    }
}

/// The copy queues of one connection (see [`IncomingState::copy_sinks`]).
pub(super) struct CopySinks {
    /// The client's bytes, for each mirroring subscriber.
    pub copies: Vec<mpsc::Sender<Bytes>>,
    /// Both directions (`true`: from the client), for each observer (`mirrord dump`); an empty
    /// chunk ends a direction.
    pub observers: Vec<mpsc::Sender<(bool, Bytes)>>,
}

impl CopySinks {
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty() && self.observers.is_empty()
    }

    /// Queues a chunk of one direction; a subscriber whose queue is full loses the rest of this
    /// connection's copy (as with the relay: a copy never slows the target).
    pub fn send(&mut self, from_client: bool, data: &Bytes) {
        if from_client {
            self.copies.retain(|c| c.try_send(data.clone()).is_ok());
        }
        self.observers
            .retain(|o| o.try_send((from_client, data.clone())).is_ok());
    }

    /// One direction ended: observers get its end marker, mirrors (which copy the client's
    /// direction only) their end of stream once the client's direction ends.
    pub fn end(&mut self, from_client: bool) {
        for o in &self.observers {
            let _ = o.try_send((from_client, Bytes::new()));
        }
        if from_client {
            self.copies.clear();
        }
    }
}
