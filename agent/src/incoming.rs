//! Incoming traffic: ports of the target that clients subscribed, mirrored or stolen.
//!
//! A subscribed port is redirected (see `redirect`) to a listener of the agent. For each
//! redirected connection the agent looks at the port's subscribers:
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
//! instead, so a vanished client never blocks the target's traffic.
//!
//! Other agents in the same target (other sessions) are not bypassed: what this agent does not
//! take ("the original destination" above) goes to the next agent that subscribed the port, and
//! only after the last one to the target; stealing a port that another agent steals in a way
//! that cannot coexist is refused (see `mesh`).

use crate::mesh::{self, PortUse};
use crate::redirect::{self, Redirector};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::body::Incoming as IncomingBody;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mirrord_protocol::agent::{AgentEvent, AgentMessage, HttpFilter, Observed, TrafficMode};
use mirrord_protocol::codec::write_frame_async;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a client may take to pick up an announced connection before the target serves it.
const PICKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a released port's listener keeps passing on connections the redirect sent to it
/// before the rule was removed.
const LISTENER_LINGER: Duration = Duration::from_secs(1);
/// How long to wait for a connection's first bytes to tell HTTP from other protocols.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(1500);
/// Chunks queued per mirroring client; a client that falls further behind loses its copy
/// rather than slowing the target.
const MIRROR_QUEUE: usize = 256;

type Body = BoxBody<Bytes, hyper::Error>;

/// A byte stream the agent serves or forwards: a redirected TCP connection, a connection handed
/// over by another agent, a connection to the target or to the next agent.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// One control channel of the agent, as a subscriber.
#[derive(Clone)]
pub struct Client {
    pub id: u64,
    /// agent --events--> this client's control channel writer
    pub message_tx: mpsc::Sender<AgentMessage>,
}

#[derive(Clone)]
struct Subscriber {
    client: Client,
    mode: TrafficMode,
    filter: Option<Arc<CompiledFilter>>,
}

struct PortState {
    accept_task: JoinHandle<()>,
    subscribers: Vec<Subscriber>,
}

pub struct IncomingState {
    redirector: Mutex<Option<Redirector>>,
    agent_id: String,
    ports: Mutex<HashMap<u16, PortState>>,
    /// Announced connections waiting for their client's channel.
    pending: Mutex<HashMap<u64, oneshot::Sender<BoxIo>>>,
    next_id: AtomicU64,
    /// Serves the other agents of the target (`mesh`), from the first subscription on.
    mesh_task: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl IncomingState {
    pub fn new(agent_id: String) -> Arc<IncomingState> {
        Arc::new(IncomingState {
            redirector: Mutex::new(None),
            agent_id,
            ports: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            mesh_task: Mutex::new(None),
        })
    }

    /// Starts answering the other agents of the target (once).
    fn ensure_mesh(self: &Arc<Self>) -> Result<()> {
        let mut task = lock(&self.mesh_task);
        if task.is_none() {
            let listener = mesh::bind(&self.agent_id)?;
            let me = self.clone();
            *task = Some(tokio::spawn(async move { me.mesh_loop(listener).await }));
        }
        Ok(())
    }

    async fn mesh_loop(self: Arc<Self>, listener: tokio::net::UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.mesh_request(stream).await {
                            tracing::debug!("mesh request: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept on the mesh socket failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// One request of another agent (see `mesh`).
    async fn mesh_request(self: Arc<Self>, mut stream: UnixStream) -> Result<()> {
        let line = tokio::time::timeout(mesh::TIMEOUT, mesh::read_line(&mut stream))
            .await
            .context("no mesh request in time")??;
        let request = match mesh::Request::parse(&line) {
            Ok(r) => r,
            Err(e) => {
                stream.write_all(format!("error {e}\n").as_bytes()).await?;
                return Ok(());
            }
        };
        match request {
            mesh::Request::Query { port } => {
                let answer = format!("{}\n", self.port_use(port));
                stream.write_all(answer.as_bytes()).await?;
                Ok(())
            }
            mesh::Request::Hop {
                port,
                peer,
                original,
                mut visited,
            } => {
                let subscribers = lock(&self.ports)
                    .get(&port)
                    .map(|s| s.subscribers.clone())
                    .unwrap_or_default();
                if subscribers.is_empty() || visited.contains(&self.agent_id) {
                    stream.write_all(b"no\n").await?;
                    return Ok(());
                }
                stream.write_all(b"ok\n").await?;
                visited.push(self.agent_id.clone());
                self.serve(Box::new(stream), peer, original, port, subscribers, visited)
                    .await
            }
        }
    }

    /// How this agent's subscribers use `port` (what other agents are told).
    fn port_use(&self, port: u16) -> PortUse {
        lock(&self.ports)
            .get(&port)
            .map(|s| {
                s.subscribers
                    .iter()
                    .map(|sub| match (sub.mode, &sub.filter) {
                        (TrafficMode::Steal, Some(_)) => PortUse::StealFiltered,
                        (TrafficMode::Steal, None) => PortUse::Steal,
                        // Copies only: the target keeps serving.
                        _ => PortUse::Mirror,
                    })
                    .max()
                    .unwrap_or(PortUse::None)
            })
            .unwrap_or(PortUse::None)
    }

    /// Refuses a steal that cannot coexist with how the other agents use `port`.
    async fn check_other_agents(&self, port: u16, new: &Subscriber) -> Result<()> {
        if new.mode != TrafficMode::Steal {
            return Ok(());
        }
        for id in mesh::peers(&self.agent_id) {
            if let Some(used) = mesh::query(&id, port).await {
                conflict(used, new.filter.is_some(), port)?;
            }
        }
        Ok(())
    }

    /// Where what this agent does not take goes: the next agent (by id) that subscribed `port`
    /// and has not had its turn, else the target itself.
    async fn next_hop(
        &self,
        port: u16,
        peer: SocketAddr,
        original: SocketAddr,
        visited: &[String],
    ) -> Result<BoxIo> {
        for id in mesh::peers(&self.agent_id) {
            if visited.contains(&id) {
                continue;
            }
            if let Some(stream) = mesh::hop(&id, port, peer, original, visited).await {
                tracing::debug!(port, %peer, next = id, "handed over to the next agent");
                return Ok(Box::new(stream));
            }
        }
        Ok(Box::new(connect_unredirected(original).await?))
    }

    fn with_redirector<T>(&self, f: impl FnOnce(&Redirector) -> Result<T>) -> Result<T> {
        let mut slot = lock(&self.redirector);
        if slot.is_none() {
            *slot = Some(Redirector::new(&self.agent_id).context("setting up the port redirect")?);
        }
        // Filled just above.
        f(slot.as_ref().expect("redirector present"))
    }

    /// Removes every rule of this agent (on a clean exit; the guard covers the others).
    pub fn cleanup(&self) {
        if let Some(r) = lock(&self.redirector).as_ref() {
            if let Err(e) = r.cleanup() {
                tracing::warn!("removing the redirect rules: {e:#}");
            }
        }
    }

    pub async fn subscribe(
        self: &Arc<Self>,
        client: &Client,
        port: u16,
        mode: TrafficMode,
        filter: Option<HttpFilter>,
    ) -> Result<()> {
        let filter = match filter {
            Some(f) => Some(Arc::new(CompiledFilter::compile(&f)?)),
            None => None,
        };
        let sub = Subscriber {
            client: client.clone(),
            mode,
            filter,
        };
        {
            let ports = lock(&self.ports);
            if let Some(state) = ports.get(&port) {
                check_conflict(&state.subscribers, &sub, port)?;
            }
        }
        // Other agents may ask this one from now on. (Two agents stealing one port at the very
        // same moment may both pass this check: the check is between subscriptions, not atomic.)
        self.ensure_mesh()?;
        self.check_other_agents(port, &sub).await?;
        let needs_listener = !lock(&self.ports).contains_key(&port);
        if needs_listener {
            // Dual-stack where the kernel has IPv6, so the port's IPv6 redirect (ip6tables) lands
            // on this listener too; IPv4-only otherwise.
            let listener = match TcpListener::bind(("::", 0)).await {
                Ok(l) => l,
                Err(_) => TcpListener::bind(("0.0.0.0", 0))
                    .await
                    .context("binding the redirect listener")?,
            };
            let to_port = listener.local_addr()?.port();
            self.with_redirector(|r| r.add(port, to_port))?;
            let me = self.clone();
            let accept_task = tokio::spawn(async move { me.accept_loop(listener, port).await });
            let mut ports = lock(&self.ports);
            match ports.get_mut(&port) {
                // Another subscriber raced us and set the port up first; keep theirs.
                Some(_) => accept_task.abort(),
                None => {
                    ports.insert(
                        port,
                        PortState {
                            accept_task,
                            subscribers: Vec::new(),
                        },
                    );
                }
            }
        }
        let mut ports = lock(&self.ports);
        // Inserted above, and only unsubscribe removes it, which needs this same lock.
        let state = ports.get_mut(&port).expect("port state present");
        check_conflict(&state.subscribers, &sub, port)?;
        state.subscribers.retain(|s| s.client.id != client.id);
        state.subscribers.push(sub);
        tracing::info!(port, ?mode, client = client.id, "subscribed");
        Ok(())
    }

    pub fn unsubscribe(&self, client_id: u64, port: u16) {
        let mut ports = lock(&self.ports);
        let Some(state) = ports.get_mut(&port) else {
            return;
        };
        state.subscribers.retain(|s| s.client.id != client_id);
        if state.subscribers.is_empty() {
            // Just looked up under the same lock.
            let state = ports.remove(&port).expect("port state present");
            drop(ports);
            // The rule goes first, the listener after a moment: connections the rule sent here
            // before it went still arrive (their NAT is decided), and the listener passes them
            // on (nobody subscribes any more) instead of the kernel refusing them.
            if let Some(r) = lock(&self.redirector).as_ref() {
                if let Err(e) = r.remove(port) {
                    tracing::warn!(port, "removing the redirect: {e:#}");
                }
            }
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        tokio::time::sleep(LISTENER_LINGER).await;
                        state.accept_task.abort();
                    });
                }
                Err(_) => state.accept_task.abort(),
            }
            tracing::info!(port, "port released");
        }
    }

    /// The client's control channel closed: drop all its subscriptions.
    pub fn client_gone(&self, client_id: u64) {
        let ports: Vec<u16> = lock(&self.ports)
            .iter()
            .filter(|(_, s)| s.subscribers.iter().any(|sub| sub.client.id == client_id))
            .map(|(p, _)| *p)
            .collect();
        for port in ports {
            self.unsubscribe(client_id, port);
        }
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
    async fn announce(
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
        let delivered = client.message_tx.send(event).await.is_ok();
        let stream = if delivered {
            tokio::time::timeout(PICKUP_TIMEOUT, rx)
                .await
                .ok()
                .and_then(|r| r.ok())
        } else {
            None
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
            let subscribers = lock(&self.ports)
                .get(&port)
                .map(|s| s.subscribers.clone())
                .unwrap_or_default();
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
        if stealers.is_empty() {
            return self.pass_through(stream, hop, &mirrors).await;
        }
        let unfiltered = stealers.iter().find(|s| s.filter.is_none()).cloned();
        let (protocol, stream) = sniff(stream).await;
        match protocol {
            Protocol::Http => self.route_http(stream, hop, stealers).await,
            Protocol::Other => match unfiltered {
                Some(stealer) => {
                    match self
                        .announce(&stealer.client, port, TrafficMode::Steal, peer, original)
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

    /// The connection goes on (to the next agent or its original destination); mirrors get a
    /// copy of what the client sends (and whatever they answer is discarded); observers get
    /// both directions as `Observed` frames.
    async fn pass_through(
        self: &Arc<Self>,
        stream: BoxIo,
        hop: Hop,
        mirrors: &[Subscriber],
    ) -> Result<()> {
        let Hop {
            peer,
            original,
            port,
            ..
        } = hop;
        let upstream = self.next_hop(port, peer, original, &hop.visited).await?;
        // Copies of the client's bytes for mirrors; of both directions for observers (dump).
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
                let Some(channel) = me
                    .announce(&client, port, TrafficMode::Mirror, peer, original)
                    .await
                else {
                    return;
                };
                let (mut drain, mut write) = tokio::io::split(channel);
                // Whatever the mirroring program answers goes nowhere.
                tokio::spawn(async move {
                    let mut sink = [0u8; 16 * 1024];
                    while matches!(drain.read(&mut sink).await, Ok(n) if n > 0) {}
                });
                while let Some(chunk) = copy_rx.recv().await {
                    if write.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = write.shutdown().await;
            });
        }
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

    /// Serves the connection as HTTP and routes each request.
    async fn route_http(
        self: &Arc<Self>,
        stream: Prefixed<BoxIo>,
        hop: Hop,
        stealers: Vec<Subscriber>,
    ) -> Result<()> {
        let router = Arc::new(Router {
            incoming: self.clone(),
            peer: hop.peer,
            original: hop.original,
            port: hop.port,
            visited: hop.visited,
            stealers,
            upstreams: tokio::sync::Mutex::new(HashMap::new()),
        });
        let service = hyper::service::service_fn(move |req| {
            let router = router.clone();
            async move { Ok::<_, std::convert::Infallible>(router.handle(req).await) }
        });
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

/// Where a connection came from and went to, and the agents that had their turn with it.
struct Hop {
    peer: SocketAddr,
    original: SocketAddr,
    port: u16,
    visited: Vec<String>,
}

fn check_conflict(existing: &[Subscriber], new: &Subscriber, port: u16) -> Result<()> {
    if new.mode != TrafficMode::Steal {
        return Ok(());
    }
    for s in existing
        .iter()
        .filter(|s| s.client.id != new.client.id && s.mode == TrafficMode::Steal)
    {
        let used = match s.filter {
            Some(_) => PortUse::StealFiltered,
            None => PortUse::Steal,
        };
        conflict(used, new.filter.is_some(), port)?;
    }
    Ok(())
}

/// Whether a new steal (filtered or not) of `port` can coexist with another session's `used`:
/// filtered steals share a port; an unfiltered steal shares it with nobody.
fn conflict(used: PortUse, new_filtered: bool, port: u16) -> Result<()> {
    match used {
        PortUse::Steal => bail!("port {port} is already stolen whole by another session"),
        PortUse::StealFiltered if !new_filtered => bail!(
            "port {port} is already stolen by another session with an HTTP filter; an unfiltered \
             steal would take its requests"
        ),
        _ => Ok(()),
    }
}

enum Protocol {
    Http,
    Other,
}

const HTTP_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Tells HTTP from other protocols by the first bytes; returns them with the stream (as a
/// stream that yields them again first).
async fn sniff(mut stream: BoxIo) -> (Protocol, Prefixed<BoxIo>) {
    let mut buf = [0u8; 16];
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let protocol = loop {
        let got = match tokio::time::timeout_at(deadline, stream.read(&mut buf[n..])).await {
            Ok(Ok(got)) => got,
            _ => break Protocol::Other,
        };
        if got == 0 {
            break Protocol::Other;
        }
        n += got;
        match classify(&buf[..n]) {
            Some(p) => break p,
            // A prefix of a method: wait for more bytes.
            None => continue,
        }
    };
    (protocol, Prefixed::new(buf[..n].to_vec(), stream))
}

/// HTTP, not HTTP, or `None` while `seen` may still become a request line or the h2 preface.
fn classify(seen: &[u8]) -> Option<Protocol> {
    let could_be = |p: &[u8]| {
        let k = p.len().min(seen.len());
        p[..k] == seen[..k]
    };
    if HTTP_METHODS.iter().any(|m| seen.starts_with(m)) || seen.starts_with(H2_PREFACE) {
        return Some(Protocol::Http);
    }
    if !(HTTP_METHODS.iter().any(|m| could_be(m)) || could_be(H2_PREFACE)) || seen.len() >= 16 {
        return Some(Protocol::Other);
    }
    None
}

/// A stream whose first bytes were already read: they are read again before the rest.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = &mut *self;
        if me.pos < me.prefix.len() {
            let n = (me.prefix.len() - me.pos).min(buf.remaining());
            buf.put_slice(&me.prefix[me.pos..me.pos + n]);
            me.pos += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An IPv4 client on the dual-stack listener shows as `::ffff:a.b.c.d`; everyone downstream
/// (the program's `getpeername`, the traffic view) wants `a.b.c.d`.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(
        mirrord_protocol::config::canonical_ip(addr.ip()),
        addr.port(),
    )
}

/// SO_ORIGINAL_DST (IPv4) / IP6T_SO_ORIGINAL_DST (IPv6): where the client meant to connect
/// before the redirect.
fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let local = stream.local_addr().ok()?;
    let v6 = matches!(local, SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_none());
    // SAFETY: sockaddr_in/sockaddr_in6 are plain data; each length matches its buffer.
    unsafe {
        if v6 {
            let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            let r = libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                &mut addr as *mut _ as *mut libc::c_void,
                &mut len,
            );
            return (r == 0).then(|| {
                SocketAddr::new(
                    std::net::Ipv6Addr::from(addr.sin6_addr.s6_addr).into(),
                    u16::from_be(addr.sin6_port),
                )
            });
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let r = libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            &mut addr as *mut _ as *mut libc::c_void,
            &mut len,
        );
        (r == 0).then(|| {
            SocketAddr::new(
                std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)).into(),
                u16::from_be(addr.sin_port),
            )
        })
    }
}

/// A connection to the target that the redirect leaves alone (marked as the agent's own).
async fn connect_unredirected(addr: SocketAddr) -> Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    redirect::mark_socket(socket.as_raw_fd()).context("marking the agent's socket")?;
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .context("connecting to the target timed out")?
        .with_context(|| format!("connecting to the target at {addr}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Where a request was sent, for reusing connections within one client connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Upstream {
    /// Onwards: the next agent, or the target.
    Target,
    Client(u64),
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Sender {
    async fn send(&mut self, req: Request<Body>) -> hyper::Result<Response<IncomingBody>> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// Routes the requests of one client connection.
struct Router {
    incoming: Arc<IncomingState>,
    peer: SocketAddr,
    original: SocketAddr,
    port: u16,
    /// The agents that had their turn with this connection (this one included).
    visited: Vec<String>,
    stealers: Vec<Subscriber>,
    upstreams: tokio::sync::Mutex<HashMap<Upstream, Sender>>,
}

impl Router {
    async fn handle(&self, mut req: Request<IncomingBody>) -> Response<Body> {
        let stealer = self
            .stealers
            .iter()
            .find(|s| matches(s.filter.as_deref(), &req))
            .cloned();
        let upgrade = req.headers().contains_key(hyper::header::UPGRADE);
        let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| req.uri().path().to_owned());
        let started = std::time::Instant::now();
        // What the traffic view shows of a stolen request; sent once the response head is back.
        let report = stealer.as_ref().map(|s| {
            let headers = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect::<Vec<_>>();
            (
                s.client.message_tx.clone(),
                headers,
                s.filter.as_ref().map(|f| f.describe()),
            )
        });
        let key = match &stealer {
            Some(s) => Upstream::Client(s.client.id),
            None => Upstream::Target,
        };
        let http2 = req.version() == hyper::Version::HTTP_2;
        let req = req.map(|b| b.boxed());
        let response = self
            .forward(key, stealer.as_ref(), http2, upgrade, req)
            .await;
        let code = response.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
        if let Some((events_tx, headers, filter)) = report {
            // try_send: the traffic view must never hold up a request.
            let _ = events_tx.try_send(AgentMessage::Event(AgentEvent::HttpRequest {
                port: self.port,
                method: method.clone(),
                path: path.clone(),
                headers,
                status: code,
                duration_ms: started.elapsed().as_millis() as u64,
                filter,
            }));
        }
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%method, %path, "forwarding failed: {e:#}");
                return status(StatusCode::BAD_GATEWAY);
            }
        };
        if let (Some(down), true) = (
            down_upgrade,
            response.status() == StatusCode::SWITCHING_PROTOCOLS,
        ) {
            let up = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                if let (Ok(down), Ok(up)) = (down.await, up.await) {
                    let mut down = TokioIo::new(down);
                    let mut up = TokioIo::new(up);
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
        response.map(|b| b.boxed())
    }

    async fn forward(
        &self,
        key: Upstream,
        stealer: Option<&Subscriber>,
        http2: bool,
        upgrade: bool,
        req: Request<Body>,
    ) -> Result<Response<IncomingBody>> {
        let mut upstreams = self.upstreams.lock().await;
        // A connection that carried an upgrade is no longer HTTP; HTTP/1 connections also die.
        let usable = match upstreams.get(&key) {
            Some(Sender::H1(s)) => !s.is_closed() && !upgrade,
            Some(Sender::H2(s)) => !s.is_closed(),
            None => false,
        };
        if !usable {
            let sender = self.connect(stealer, http2).await?;
            upstreams.insert(key, sender);
        }
        // Present: inserted just above when it was missing or unusable.
        let sender = upstreams.get_mut(&key).expect("upstream present");
        if let Sender::H2(s) = sender {
            // HTTP/2 multiplexes: send without holding the map, so streams run concurrently.
            let mut s = s.clone();
            drop(upstreams);
            s.ready().await?;
            return Ok(s.send_request(req).await?);
        }
        Ok(sender.send(req).await?)
    }

    async fn connect(&self, stealer: Option<&Subscriber>, http2: bool) -> Result<Sender> {
        match stealer {
            Some(s) => {
                let channel = self
                    .incoming
                    .announce(
                        &s.client,
                        self.port,
                        TrafficMode::Steal,
                        self.peer,
                        self.original,
                    )
                    .await
                    .context("the stealing client did not pick the connection up")?;
                handshake(TokioIo::new(channel), http2).await
            }
            None => {
                let stream = self
                    .incoming
                    .next_hop(self.port, self.peer, self.original, &self.visited)
                    .await?;
                handshake(TokioIo::new(stream), http2).await
            }
        }
    }
}

async fn handshake<T>(io: TokioIo<T>, http2: bool) -> Result<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if http2 {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Sender::H1(sender))
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r
}

/// A filter with its regexes compiled.
pub enum CompiledFilter {
    Header(regex::Regex),
    Path(regex::Regex),
    Method(String),
    AllOf(Vec<CompiledFilter>),
    AnyOf(Vec<CompiledFilter>),
}

impl CompiledFilter {
    pub fn compile(f: &HttpFilter) -> Result<CompiledFilter> {
        let re = |s: &str| {
            regex::Regex::new(s).with_context(|| format!("invalid regular expression {s:?}"))
        };
        Ok(match f {
            HttpFilter::Header(r) => CompiledFilter::Header(re(r)?),
            HttpFilter::Path(r) => CompiledFilter::Path(re(r)?),
            HttpFilter::Method(m) => CompiledFilter::Method(m.to_ascii_uppercase()),
            HttpFilter::AllOf(v) => {
                CompiledFilter::AllOf(v.iter().map(Self::compile).collect::<Result<_>>()?)
            }
            HttpFilter::AnyOf(v) => {
                CompiledFilter::AnyOf(v.iter().map(Self::compile).collect::<Result<_>>()?)
            }
        })
    }

    fn matches<B>(&self, req: &Request<B>) -> bool {
        match self {
            CompiledFilter::Header(re) => req.headers().iter().any(|(name, value)| {
                value
                    .to_str()
                    .is_ok_and(|v| re.is_match(&format!("{}: {v}", name.as_str())))
            }),
            CompiledFilter::Path(re) => {
                re.is_match(req.uri().path())
                    || req
                        .uri()
                        .path_and_query()
                        .is_some_and(|pq| re.is_match(pq.as_str()))
            }
            CompiledFilter::Method(m) => req.method().as_str().eq_ignore_ascii_case(m),
            CompiledFilter::AllOf(v) => v.iter().all(|f| f.matches(req)),
            CompiledFilter::AnyOf(v) => v.iter().any(|f| f.matches(req)),
        }
    }

    /// The filter as the user wrote it, for the traffic view.
    pub fn describe(&self) -> String {
        let list = |v: &[CompiledFilter]| {
            v.iter()
                .map(|f| f.describe())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            CompiledFilter::Header(re) => format!("header: {}", re.as_str()),
            CompiledFilter::Path(re) => format!("path: {}", re.as_str()),
            CompiledFilter::Method(m) => format!("method: {m}"),
            CompiledFilter::AllOf(v) => format!("all_of({})", list(v)),
            CompiledFilter::AnyOf(v) => format!("any_of({})", list(v)),
        }
    }

    /// Whether the filter names Kubernetes probes explicitly (then it may take them).
    fn names_probes(&self) -> bool {
        match self {
            CompiledFilter::Header(re) | CompiledFilter::Path(re) => {
                re.as_str().contains("kube-probe")
            }
            CompiledFilter::Method(_) => false,
            CompiledFilter::AllOf(v) | CompiledFilter::AnyOf(v) => {
                v.iter().any(|f| f.names_probes())
            }
        }
    }
}

/// Whether a stealer with `filter` takes `req`. Health checks of the kubelet stay with the
/// target unless the filter names them: stealing them would make Kubernetes restart the pod.
fn matches<B>(filter: Option<&CompiledFilter>, req: &Request<B>) -> bool {
    let probe = req
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("kube-probe/"));
    match filter {
        None => !probe,
        Some(f) => (!probe || f.names_probes()) && f.matches(req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn f(filter: HttpFilter) -> CompiledFilter {
        CompiledFilter::compile(&filter).unwrap()
    }

    #[test]
    fn filters_match_requests() {
        let alice = req("GET", "/api/x?y=1", &[("X-User", "alice")]);
        let bob = req("POST", "/other", &[("x-user", "bob")]);
        let h = f(HttpFilter::Header("x-user: alice".into()));
        assert!(matches(Some(&h), &alice));
        assert!(!matches(Some(&h), &bob));
        let p = f(HttpFilter::Path("^/api/".into()));
        assert!(matches(Some(&p), &alice) && !matches(Some(&p), &bob));
        let m = f(HttpFilter::Method("post".into()));
        assert!(matches(Some(&m), &bob) && !matches(Some(&m), &alice));
        let all = f(HttpFilter::AllOf(vec![
            HttpFilter::Header("x-user: bob".into()),
            HttpFilter::Method("POST".into()),
        ]));
        assert!(matches(Some(&all), &bob) && !matches(Some(&all), &alice));
        let any = f(HttpFilter::AnyOf(vec![
            HttpFilter::Header("x-user: bob".into()),
            HttpFilter::Path("^/api".into()),
        ]));
        assert!(matches(Some(&any), &bob) && matches(Some(&any), &alice));
    }

    #[test]
    fn probes_stay_with_the_target_unless_named() {
        let probe = req("GET", "/healthz", &[("user-agent", "kube-probe/1.29")]);
        assert!(!matches(None, &probe));
        assert!(!matches(
            Some(&f(HttpFilter::Path("/healthz".into()))),
            &probe
        ));
        assert!(matches(
            Some(&f(HttpFilter::Header("user-agent: kube-probe/.*".into()))),
            &probe
        ));
        assert!(matches(None, &req("GET", "/", &[("user-agent", "curl/8")])));
    }
}
