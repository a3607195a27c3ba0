//! Incoming traffic: ports of the target that clients subscribed, mirrored or stolen.
//!
//! A port whose subscribers only copy (mirror, observe) is captured in the target's namespace
//! (see `capture`: no redirect, the target's traffic never crosses the agent) unless they asked
//! for the relay (`mirror_capture: false`). Any other subscribed port is redirected (see
//! `redirect`) to a listener of the agent. For each redirected connection the agent looks at the
//! port's subscribers:
//! - no stealer: the connection passes through to its original destination (the target keeps
//!   serving) and the client's bytes are copied to every mirroring client;
//! - stealers and the connection speaks HTTP: every request is routed on its own, to the first
//!   stealer whose filter matches it (an unfiltered steal matches everything but `kube-probe/`
//!   requests), or else to the original destination;
//! - stealers but not HTTP: an unfiltered stealer gets the whole connection, otherwise it passes
//!   through unchanged.
//!
//! A client receives a connection by opening an `Incoming { id }` channel after the agent
//! announced it with an event; the agent waits a bounded time for that, then serves the target
//! instead, so a vanished client never blocks the target's traffic. A local agent delivers
//! stolen connections to the program itself when the session asks for it (`deliver`).
//!
//! Other agents in the same target (other sessions) are not bypassed: what this agent does not
//! take ("the original destination" above) goes to the next agent that subscribed the port, and
//! only after the last one to the target; stealing a port that another agent steals in a way
//! that cannot coexist is refused (see `mesh`).

//!
//! Files, one job each: `deliver` (direct delivery of stolen connections to the program, else the
//! announce), `registry` (who subscribed which port; the ONE owner of a port's state,
//! its redirect rule and its capture), `capture` (copies by packet capture), `mesh_server` (answering and asking the other agents of the target),
//! `leftovers` (removing the rules of dead agents at start), `mirror_view` (the traffic view of
//! copies the agent delivers itself), `passthrough` (pass-through with
//! mirror and observe copies), `http1_steal` (unfiltered steal of HTTP/1: bytes as they are,
//! each head read), `sniff` (HTTP or not), `original_dst` (`SO_ORIGINAL_DST`,
//! unredirected connections to the target), `http_route` (per-request routing of filtered
//! steals), `filter` (HTTP filters), `tls` (ports where the target terminates TLS: the agent
//! terminates it with the target's certificate, then serves the decrypted streams as above).

mod capture;
mod deliver;
mod filter;
mod http1_steal;
mod http_route;
mod leftovers;
mod mesh_server;
mod mirror_view;
mod original_dst;
mod passthrough;
mod registry;
mod sniff;
mod tls;

pub use filter::CompiledFilter;

use anyhow::Result;
use mirrord_protocol::agent::{AgentEvent, AgentMessage, HttpFilter, TlsPort, TrafficMode};
use original_dst::{canonical, original_destination};
use registry::Registry;
use sniff::{sniff, Protocol};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a client may take to pick up an announced connection before the target serves it.
const PICKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A byte stream the agent serves or forwards: a redirected TCP connection, a connection handed
/// over by another agent, a connection to the target or to the next agent.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// One control channel of the agent, as a subscriber.
#[derive(Clone)]
pub struct Client {
    pub id: u64,
    /// agent --answers, announces--> this client's control channel writer (written at once)
    pub message_tx: mpsc::Sender<AgentMessage>,
    /// flows --traffic-view events--> the same writer (written in batches; `try_send` only)
    pub traffic_tx: crate::traffic::TrafficTx,
    /// Set when the channel closed: a subscribe still in flight then adds nothing, and no
    /// connection is offered to it any more.
    pub gone: Gone,
}

/// The mark of a client whose control channel closed. Set before its subscriptions are
/// released (which runs rule commands, seconds under load): in between, its subscribers are
/// skipped and its announces end, so the target serves those connections at once instead of
/// after a pickup timeout per agent.
#[derive(Clone)]
pub struct Gone(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Gone {
    fn default() -> Self {
        Gone(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl Gone {
    pub fn set(&self) {
        self.0.send_replace(true);
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once the mark is set.
    pub async fn wait(&self) {
        // The sender lives in `self`, so the receiver cannot see it closed.
        let _ = self.0.subscribe().wait_for(|gone| *gone).await;
    }
}

#[derive(Clone)]
struct Subscriber {
    client: Client,
    mode: TrafficMode,
    filter: Option<Arc<CompiledFilter>>,
    /// The target terminates TLS on this port: its certificate and key, loaded by the agent.
    tls: Option<Arc<tls::TlsTermination>>,
    /// Asked for its copies by capture rather than by the relay (mirror and observe only).
    capture: bool,
}

pub struct IncomingState {
    agent_id: String,
    /// The target's filesystem root, for the certificates of TLS ports: `/proc/PID/root`, or
    /// `/` for a target without a process (`netns/NAME`: a network namespace shares the
    /// host's filesystem).
    target_root: PathBuf,
    registry: Registry,
    /// Announced connections waiting for their client's channel.
    pending: Mutex<HashMap<u64, oneshot::Sender<BoxIo>>>,
    next_id: AtomicU64,
    /// Serves the other agents of the target (`mesh`), from the first subscription on.
    mesh_task: Mutex<Option<JoinHandle<()>>>,
    /// Sockets on the developer machine, for a local agent (see `deliver`).
    home: Option<crate::home::HomeSockets>,
    /// (client, port) → the program's listener the agent delivers stolen connections to.
    direct: Mutex<HashMap<(u64, u16), SocketAddr>>,
    /// (client IP, pod IP) → its index in delivery source addresses (see `deliver`).
    source_indexes: Mutex<HashMap<(std::net::IpAddr, std::net::IpAddr), u32>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl IncomingState {
    pub fn new(
        agent_id: String,
        target_pid: Option<u32>,
        home: Option<crate::home::HomeSockets>,
    ) -> Arc<IncomingState> {
        let target_root = match target_pid {
            Some(pid) => PathBuf::from(format!("/proc/{pid}/root")),
            None => PathBuf::from("/"),
        };
        Arc::new(IncomingState {
            target_root,
            registry: Registry::new(agent_id.clone()),
            agent_id,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            mesh_task: Mutex::new(None),
            home,
            direct: Mutex::new(HashMap::new()),
            source_indexes: Mutex::new(HashMap::new()),
        })
    }

    /// Removes the rules of agents that are gone (see `leftovers`); run it at start, so the
    /// target's ports serve again before this agent reports ready.
    pub async fn sweep_dead_agents(&self) {
        leftovers::sweep(&self.agent_id).await;
    }

    /// Removes every rule of this agent (on a clean exit; the guard covers the others).
    pub fn cleanup(&self) {
        self.registry.cleanup();
    }

    pub async fn subscribe(
        self: &Arc<Self>,
        client: &Client,
        port: u16,
        mode: TrafficMode,
        filter: Option<HttpFilter>,
        tls: Option<TlsPort>,
        capture: bool,
    ) -> Result<()> {
        let filter = match filter {
            Some(f) => Some(Arc::new(CompiledFilter::compile(&f)?)),
            None => None,
        };
        let tls = match tls {
            Some(spec) => Some(Arc::new(tls::TlsTermination::load(
                &self.target_root,
                port,
                &spec,
            )?)),
            None => None,
        };
        let sub = Subscriber {
            client: client.clone(),
            mode,
            filter,
            tls,
            capture,
        };
        self.registry.precheck(port, &sub)?;
        // Other agents may ask this one from now on. (Two agents stealing one port at the very
        // same moment may both pass this check: the check is between subscriptions, not atomic.)
        let mesh = self.ensure_mesh()?;
        self.check_other_agents(port, &sub).await?;
        let me = self.clone();
        let weak = Arc::downgrade(self);
        self.registry
            .subscribe(
                port,
                sub,
                &mesh,
                move |listener| tokio::spawn(async move { me.accept_loop(listener, port).await }),
                move |ports| capture::Capture::start(weak, ports),
            )
            .await?;
        tracing::info!(port, ?mode, client = client.id, "subscribed");
        Ok(())
    }

    pub async fn unsubscribe(&self, client_id: u64, port: u16) {
        self.forget_deliveries(client_id, Some(port));
        self.registry.unsubscribe(client_id, port).await;
    }

    /// The client's control channel closed: drop all its subscriptions.
    pub async fn client_gone(&self, client: &Client) {
        for port in self.registry.client_gone(client).await {
            self.unsubscribe(client.id, port).await;
        }
        self.forget_deliveries(client.id, None);
    }

    /// A client opened the channel for announced connection `id`.
    pub fn attach(&self, id: u64, stream: BoxIo) {
        match lock(&self.pending).remove(&id) {
            Some(tx) => {
                let _ = tx.send(stream);
            }
            None => tracing::debug!(id, "channel for an unknown or expired connection"),
        }
    }

    /// Announces a connection to `client` and waits for its channel.
    pub(super) async fn announce(
        &self,
        client: &Client,
        port: u16,
        mode: TrafficMode,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<BoxIo> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let event = AgentMessage::Event(AgentEvent::Incoming {
            id,
            port,
            mode,
            peer,
            local,
        });
        // One bound for both steps: a client whose event queue stays full (it stopped reading)
        // holds the connection no longer than one that never picks it up; the target serves it.
        // A client that goes meanwhile (its event may have been written to a closed socket)
        // ends the wait at once.
        let stream = tokio::select! {
            stream = tokio::time::timeout(PICKUP_TIMEOUT, async {
                if client.gone.is_set() {
                    return None;
                }
                client.message_tx.send(event).await.ok()?;
                rx.await.ok()
            }) => stream.ok().flatten(),
            _ = client.gone.wait() => None,
        };
        lock(&self.pending).remove(&id);
        stream
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, port: u16) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok((s, peer)) => (s, canonical(peer)),
                Err(e) => {
                    tracing::warn!(port, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let original = original_destination(&stream).unwrap_or_else(|| {
                let ip = stream
                    .local_addr()
                    .map(|a| canonical(a).ip())
                    .unwrap_or([0, 0, 0, 0].into());
                SocketAddr::new(ip, port)
            });
            let subscribers = self.registry.subscribers(port);
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            let visited = vec![self.agent_id.clone()];
            tokio::spawn(async move {
                if let Err(e) = me
                    .serve(Box::new(stream), peer, original, port, subscribers, visited)
                    .await
                {
                    tracing::debug!(port, %peer, "incoming connection ended: {e:#}");
                }
            });
        }
    }

    /// Serves one connection for `port` (from the redirect, or handed over by another agent);
    /// `visited` are the agents that had their turn, this one included.
    async fn serve(
        self: Arc<Self>,
        stream: BoxIo,
        peer: SocketAddr,
        original: SocketAddr,
        port: u16,
        subscribers: Vec<Subscriber>,
        visited: Vec<String>,
    ) -> Result<()> {
        let stealers: Vec<Subscriber> = subscribers
            .iter()
            .filter(|s| s.mode == TrafficMode::Steal)
            .cloned()
            .collect();
        // Mirrors and observers (dump) both ride along with the connection.
        let mirrors: Vec<Subscriber> = subscribers
            .iter()
            .filter(|s| matches!(s.mode, TrafficMode::Mirror | TrafficMode::Observe))
            .cloned()
            .collect();
        let hop = Hop {
            peer,
            original,
            port,
            visited,
        };
        if let Some(tls) = subscribers.iter().find_map(|s| s.tls.clone()) {
            return self.serve_tls(stream, hop, tls, stealers, mirrors).await;
        }
        if stealers.is_empty() {
            return self.pass_through(stream, hop, &mirrors).await;
        }
        let unfiltered = stealers.iter().find(|s| s.filter.is_none()).cloned();
        let (protocol, stream) = sniff(stream).await;
        match protocol {
            // One stealer that takes everything: no HTTP server is needed, only a look at each
            // request head (for the kubelet's probes); h2 multiplexes, so it is routed.
            Protocol::Http
                if stealers.len() == 1 && unfiltered.is_some() && !stream.sniffed(b"PRI ") =>
            {
                let stealer = stealers.into_iter().next().expect("one stealer");
                self.steal_http1(stream, hop, stealer).await
            }
            Protocol::Http => self.route_http(stream, hop, stealers, None).await,
            Protocol::Other => match unfiltered {
                Some(stealer) => {
                    match self
                        .stolen_channel(&stealer.client, port, peer, original)
                        .await
                    {
                        Some(mut channel) => {
                            let mut stream = stream;
                            let _ = tokio::io::copy_bidirectional(&mut stream, &mut channel).await;
                            Ok(())
                        }
                        None => self.pass_through(Box::new(stream), hop, &[]).await,
                    }
                }
                None => self.pass_through(Box::new(stream), hop, &mirrors).await,
            },
        }
    }
}

/// Where a connection came from and went to, and the agents that had their turn with it.
struct Hop {
    peer: SocketAddr,
    original: SocketAddr,
    port: u16,
    visited: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn client(id: u64) -> (Client, mpsc::Receiver<AgentMessage>) {
        let (message_tx, message_rx) = mpsc::channel(8);
        let (traffic_tx, _) = crate::traffic::channel();
        let client = Client {
            id,
            message_tx,
            traffic_tx,
            gone: Gone::default(),
        };
        (client, message_rx)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("a literal address")
    }

    /// A client whose channel closes after it was told of a connection (the event may sit in a
    /// dead socket's buffer) gives the connection back at once, not after the pickup timeout.
    #[tokio::test(start_paused = true)]
    async fn an_announce_ends_when_its_client_goes() {
        let incoming = IncomingState::new("test".into(), None, None);
        let (client, mut events) = client(1);
        let started = tokio::time::Instant::now();
        let announced = tokio::spawn({
            let (incoming, client) = (incoming.clone(), client.clone());
            async move {
                let (peer, local) = (addr("10.0.0.1:5000"), addr("10.0.0.2:80"));
                incoming
                    .announce(&client, 80, TrafficMode::Steal, peer, local)
                    .await
            }
        });
        assert!(
            matches!(
                events.recv().await,
                Some(AgentMessage::Event(AgentEvent::Incoming { port: 80, .. }))
            ),
            "the client is told first"
        );
        tokio::task::yield_now().await;
        assert!(!announced.is_finished(), "waiting for the client's channel");
        client.gone.set();
        let stream = announced.await.expect("the announce does not panic");
        assert!(stream.is_none());
        assert!(
            started.elapsed() < PICKUP_TIMEOUT,
            "given back after {:?}",
            started.elapsed()
        );
        assert!(lock(&incoming.pending).is_empty(), "nothing left waiting");
        // A client already gone is not told at all.
        let (peer, local) = (addr("10.0.0.1:5001"), addr("10.0.0.2:80"));
        let again = incoming
            .announce(&client, 80, TrafficMode::Steal, peer, local)
            .await;
        assert!(again.is_none());
        assert!(events.try_recv().is_err(), "no event for a gone client");
        assert!(started.elapsed() < PICKUP_TIMEOUT);
    }

    /// Without a channel, the target serves the connection after the pickup timeout.
    #[tokio::test(start_paused = true)]
    async fn an_announce_nobody_picks_up_ends_at_the_timeout() {
        let incoming = IncomingState::new("test".into(), None, None);
        let (client, _events) = client(1);
        let started = tokio::time::Instant::now();
        let (peer, local) = (addr("10.0.0.1:5000"), addr("10.0.0.2:80"));
        let stream = incoming
            .announce(&client, 80, TrafficMode::Mirror, peer, local)
            .await;
        assert!(stream.is_none());
        assert!(started.elapsed() >= PICKUP_TIMEOUT);
    }
}
