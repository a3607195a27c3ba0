//! Incoming traffic, session side: which process listens for which pod port, and delivery of
//! the connections the agent announces to the process's loopback listener.

use crate::agent::{AgentConnector, AgentControl};
use crate::http_sniff::{Head, Seen, Sniffer};
use crate::https_delivery::TlsDelivery;
use crate::traffic::TrafficLog;
use mirrord_protocol::agent::{
    AgentChannel, AgentEvent, AgentRequest, AgentResponse, TlsPort, TrafficMode,
};
use mirrord_protocol::api::{now_ms, TrafficEvent};
use mirrord_protocol::config::{IncomingConfig, IncomingMode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;

mod delivered;
use delivered::Delivered;

/// One process of the session listening for a pod port (or `mirrord dump` observing it).
struct Listening {
    /// Where the program's listener really is (loopback), or unused for an observer.
    local: SocketAddr,
    /// The layer control connection that asked; its end unsubscribes.
    owner: u64,
    /// For `mirrord dump`: announced connections go here instead of to a program.
    observer: Option<mpsc::Sender<ObservedConnection>>,
}

/// The processes of the session that listen for one pod port. Several may (pre-fork servers,
/// `SO_REUSEPORT` workers): the agent subscription is one per port and session, and each
/// announced connection goes to the next listener in turn.
#[derive(Default)]
struct PortListeners {
    listeners: Vec<Listening>,
    /// Round-robin position for the next delivery.
    next: usize,
}

impl PortListeners {
    /// Where the next connection goes: a program's address, or the observer.
    fn pick(&mut self) -> Option<(SocketAddr, Option<mpsc::Sender<ObservedConnection>>)> {
        if let Some(o) = self.listeners.iter().find_map(|l| l.observer.clone()) {
            return Some((SocketAddr::from(([127, 0, 0, 1], 0)), Some(o)));
        }
        if self.listeners.is_empty() {
            return None;
        }
        let l = &self.listeners[self.next % self.listeners.len()];
        self.next = self.next.wrapping_add(1);
        Some((l.local, None))
    }
}

/// A connection of an observed port: `channel` carries `Observed` frames.
pub struct ObservedConnection {
    pub port: u16,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub channel: crate::agent::AgentStream,
}

/// Requests a mirrored connection may have unanswered before the session stops reading its
/// HTTP heads (the bytes still flow; only the traffic rows of that connection stop).
const MAX_UNANSWERED: usize = 1024;

/// How long an `accept` may wait for the session to handle the agent's events up to now (see
/// `peer_of`); past it, the program sees the loopback address it really got.
const CATCH_UP_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Entries of `delivered` at most (the oldest go first): at 2,000 connections a second, an
/// entry stays 8 s, far longer than a program takes to accept.
const MAX_DELIVERED: usize = 16 * 1024;
/// How long a delivered connection the program has not accepted keeps its entry.
const DELIVERED_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

/// A mirrored request seen on its way to the program, waiting for the program's answer.
struct WaitingRequest {
    method: String,
    path: String,
    headers: std::collections::BTreeMap<String, String>,
    since: std::time::Instant,
}

/// The requests of one mirrored connection that the program has not answered yet.
///
/// Invariant: it never holds more than [`MAX_UNANSWERED`] requests (or methods). A program that
/// leaves more unanswered stops this connection's sniffing for good: its bytes still flow, only
/// its traffic rows stop, because answers could no longer be paired with requests once one was
/// dropped.
#[derive(Default)]
struct Unanswered {
    requests: std::collections::VecDeque<WaitingRequest>,
    /// Methods of the requests, for the response sniffer (the answer to a HEAD has no body).
    methods: std::collections::VecDeque<String>,
    gave_up: bool,
}

impl Unanswered {
    fn sniffing(&self) -> bool {
        !self.gave_up
    }

    fn asked(&mut self, request: WaitingRequest) {
        if !self.gave_up {
            self.requests.push_back(request);
            self.check();
        }
    }

    fn methods_seen(&mut self, methods: impl Iterator<Item = String>) {
        if !self.gave_up {
            self.methods.extend(methods);
            self.check();
        }
    }

    fn check(&mut self) {
        if self.requests.len() > MAX_UNANSWERED || self.methods.len() > MAX_UNANSWERED {
            self.gave_up = true;
            self.requests = Default::default();
            self.methods = Default::default();
        }
    }
}

pub struct IncomingRouter {
    config: IncomingConfig,
    /// `https_delivery: tls`: connections of `tls_ports` reach the program over TLS again.
    tls_delivery: Option<TlsDelivery>,
    traffic: Arc<TrafficLog>,
    /// Invariant: a port has an entry here exactly while the session's agent subscription for
    /// it exists (or is being made by the holder of `changes`), and the entry is never empty.
    listening: Mutex<HashMap<u16, PortListeners>>,
    /// Serialises subscription changes (the agent request included), so a process that stops
    /// listening and one that starts, at the same time on the same port, cannot leave the port
    /// unsubscribed while someone listens, or subscribed while nobody does.
    changes: tokio::sync::Mutex<()>,
    /// Source address of a delivery connection → (client in the cluster, pod address).
    peers: Mutex<HashMap<SocketAddr, (SocketAddr, SocketAddr)>>,
    /// The agent can deliver stolen connections to the program itself (a local agent, and the
    /// session relay not forced): see [`AgentRequest::DeliverTo`].
    direct_delivery: bool,
    /// Port → the listener the agent was last told to deliver to (absent: it announces).
    delivering_to: Mutex<HashMap<u16, SocketAddr>>,
    /// Source address of a connection the agent delivered itself → (client, pod address),
    /// from its `Delivered` event until the program accepted it.
    /// Bounded by [`MAX_DELIVERED`] and [`DELIVERED_KEPT`] (old entries go first).
    delivered: Mutex<Delivered>,
    /// run --how many agent events it has handled--> `peer_of` (waiting for a `Delivered`)
    handled_tx: tokio::sync::watch::Sender<u64>,
    /// run --"a `Delivered` entry was added"--> `peer_of` waiting for one
    delivered_added: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl IncomingRouter {
    /// Fails when `https_delivery` cannot be used (an unreadable trust root, a bad name).
    /// `direct_delivery`: the agent is local and may connect stolen connections to the
    /// program's listener itself.
    pub fn new(
        config: IncomingConfig,
        traffic: Arc<TrafficLog>,
        direct_delivery: bool,
    ) -> anyhow::Result<Arc<IncomingRouter>> {
        Ok(Arc::new(IncomingRouter {
            tls_delivery: TlsDelivery::from_config(&config.https_delivery)?,
            config,
            traffic,
            listening: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
            peers: Mutex::new(HashMap::new()),
            direct_delivery,
            delivering_to: Mutex::new(HashMap::new()),
            delivered: Mutex::new(Delivered::new(MAX_DELIVERED, DELIVERED_KEPT)),
            handled_tx: tokio::sync::watch::Sender::new(0),
            delivered_added: tokio::sync::Notify::new(),
        }))
    }

    /// Where the target keeps the certificate of `port`, if it is one of `tls_ports`.
    fn tls_of(&self, port: u16) -> Option<TlsPort> {
        self.config.tls_port(port).map(|t| TlsPort {
            cert_pem: t.cert_pem.clone(),
            key_pem: t.key_pem.clone(),
        })
    }

    /// A process listens for the pod's `port` at `local`: subscribe it on the agent with the
    /// session's mode and filter (once per port: other processes of the session that listen
    /// for the same port share the subscription and take turns).
    pub async fn listen(
        &self,
        control: &AgentControl,
        owner: u64,
        port: u16,
        local: SocketAddr,
    ) -> Result<(), String> {
        let mode = match self.config.mode {
            IncomingMode::Mirror => TrafficMode::Mirror,
            IncomingMode::Steal => TrafficMode::Steal,
            IncomingMode::Off => return Err("incoming traffic is off in the configuration".into()),
        };
        let filter = match mode {
            TrafficMode::Steal if self.config.http_filter.applies_to(port) => {
                self.config.http_filter.to_filter()
            }
            _ => None,
        };
        let _changing = self.changes.lock().await;
        let joined = match lock(&self.listening).get_mut(&port) {
            Some(entry) => {
                entry.listeners.retain(|l| l.owner != owner);
                entry.listeners.push(Listening {
                    local,
                    owner,
                    observer: None,
                });
                true
            }
            None => false,
        };
        if joined {
            tracing::info!(port, %local, owner, "another listener for a subscribed port");
            self.update_delivery(control, port).await;
            return Ok(());
        }
        match control
            .request(AgentRequest::Subscribe {
                port,
                mode,
                filter,
                tls: self.tls_of(port),
                capture: self.config.mirror_capture,
            })
            .await
        {
            Ok(AgentResponse::Subscribed) => {
                lock(&self.listening).insert(
                    port,
                    PortListeners {
                        listeners: vec![Listening {
                            local,
                            owner,
                            observer: None,
                        }],
                        next: 0,
                    },
                );
                tracing::info!(port, %local, ?mode, "port subscribed");
                self.traffic.emit(TrafficEvent::PortSubscription {
                    time: now_ms(),
                    port,
                    mode: mode_name(mode).into(),
                    active: true,
                });
                self.update_delivery(control, port).await;
                Ok(())
            }
            Ok(AgentResponse::Error(e)) => Err(e),
            Ok(other) => Err(format!("unexpected agent answer {other:?}")),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// Watches the target's `port` without taking part (both directions, as frames): the
    /// receiver gets every connection.
    pub async fn observe(
        &self,
        control: &AgentControl,
        owner: u64,
        port: u16,
    ) -> Result<mpsc::Receiver<ObservedConnection>, String> {
        // Bounded: when `mirrord dump` falls this far behind, the agent's pick-up timeout
        // hands further connections back to the target.
        let (observed_tx, observed_rx) = mpsc::channel(256);
        let request = AgentRequest::Subscribe {
            port,
            mode: TrafficMode::Observe,
            filter: None,
            tls: self.tls_of(port),
            capture: self.config.mirror_capture,
        };
        let _changing = self.changes.lock().await;
        match control.request(request).await {
            Ok(AgentResponse::Subscribed) => {
                lock(&self.listening).insert(
                    port,
                    PortListeners {
                        listeners: vec![Listening {
                            local: SocketAddr::from(([127, 0, 0, 1], 0)),
                            owner,
                            observer: Some(observed_tx),
                        }],
                        next: 0,
                    },
                );
                Ok(observed_rx)
            }
            Ok(AgentResponse::Error(e)) => Err(e),
            Ok(other) => Err(format!("unexpected agent answer {other:?}")),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    pub async fn unlisten(&self, control: &AgentControl, owner: u64, port: u16) {
        let _changing = self.changes.lock().await;
        let last_one_gone = {
            let mut l = lock(&self.listening);
            match l.get_mut(&port) {
                Some(entry) if entry.listeners.iter().any(|x| x.owner == owner) => {
                    entry.listeners.retain(|x| x.owner != owner);
                    let empty = entry.listeners.is_empty();
                    if empty {
                        l.remove(&port);
                    }
                    empty
                }
                _ => false,
            }
        };
        if !last_one_gone {
            self.update_delivery(control, port).await;
        }
        if last_one_gone {
            // The agent forgets where it delivered with the subscription.
            lock(&self.delivering_to).remove(&port);
            if let Err(e) = control.request(AgentRequest::Unsubscribe { port }).await {
                tracing::warn!(port, "unsubscribing: {e:#}");
            }
            tracing::info!(port, "port unsubscribed");
            self.traffic.emit(TrafficEvent::PortSubscription {
                time: now_ms(),
                port,
                mode: self.mode_label().into(),
                active: false,
            });
        }
    }

    /// A process left: release its ports at once, so the pod serves them again.
    pub async fn owner_gone(&self, control: &AgentControl, owner: u64) {
        let ports: Vec<u16> = lock(&self.listening)
            .iter()
            .filter(|(_, e)| e.listeners.iter().any(|l| l.owner == owner))
            .map(|(p, _)| *p)
            .collect();
        for port in ports {
            self.unlisten(control, owner, port).await;
        }
    }

    /// The session reached its agent again after a dropped connection: the agent released
    /// every subscription when the connection went (handing the pod its traffic back), so
    /// each port someone still listens for is subscribed again. Ports the agent refuses now
    /// are reported and dropped (keeping the invariant on `listening`).
    pub async fn resubscribe(&self, control: &AgentControl) -> Result<(), String> {
        let _changing = self.changes.lock().await;
        // A resumed agent released everything, deliveries included.
        lock(&self.delivering_to).clear();
        let ports: Vec<(u16, bool)> = lock(&self.listening)
            .iter()
            .map(|(port, e)| (*port, e.listeners.iter().any(|l| l.observer.is_some())))
            .collect();
        let mut failures = Vec::new();
        for (port, observed) in ports {
            let mode = match (observed, self.config.mode) {
                (true, _) => TrafficMode::Observe,
                (false, IncomingMode::Steal) => TrafficMode::Steal,
                (false, _) => TrafficMode::Mirror,
            };
            let filter = match mode {
                TrafficMode::Steal if self.config.http_filter.applies_to(port) => {
                    self.config.http_filter.to_filter()
                }
                _ => None,
            };
            let request = AgentRequest::Subscribe {
                port,
                mode,
                filter,
                tls: self.tls_of(port),
                capture: self.config.mirror_capture,
            };
            let why = match control.request(request).await {
                Ok(AgentResponse::Subscribed) => {
                    tracing::info!(port, ?mode, "port subscribed again");
                    self.update_delivery(control, port).await;
                    continue;
                }
                Ok(AgentResponse::Error(e)) => e,
                Ok(other) => format!("unexpected agent answer {other:?}"),
                Err(e) => format!("{e:#}"),
            };
            lock(&self.listening).remove(&port);
            self.traffic.emit(TrafficEvent::PortSubscription {
                time: now_ms(),
                port,
                mode: mode_name(mode).into(),
                active: false,
            });
            failures.push(format!("port {port}: {why}"));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "after the reconnect, the agent refused: {}",
                failures.join("; ")
            ))
        }
    }

    /// Ports this session's processes currently receive.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = lock(&self.listening).keys().copied().collect();
        p.sort_unstable();
        p
    }

    fn mode_label(&self) -> &'static str {
        match self.config.mode {
            IncomingMode::Steal => "steal",
            IncomingMode::Mirror => "mirror",
            IncomingMode::Off => "off",
        }
    }

    /// Relays a mirrored connection to the program while turning the HTTP/1 requests in it (and
    /// the program's answers) into traffic events.
    async fn relay_sniffing<P, A>(&self, program: P, agent: A, port: u16)
    where
        P: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let unanswered: Arc<Mutex<Unanswered>> = Arc::default();
        let (mut agent_r, mut agent_w) = tokio::io::split(agent);
        let (mut program_r, mut program_w) = tokio::io::split(program);
        let requests = unanswered.clone();
        let to_program = async move {
            let mut sniffer = Sniffer::new(true);
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = agent_r.read(&mut buf).await {
                if n == 0 || program_w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                if !lock(&requests).sniffing() {
                    continue;
                }
                for seen in sniffer.feed(&buf[..n]) {
                    if let Seen::Head(Head::Request {
                        method,
                        path,
                        headers,
                        ..
                    }) = seen
                    {
                        lock(&requests).asked(WaitingRequest {
                            method,
                            path,
                            headers,
                            since: std::time::Instant::now(),
                        });
                    }
                }
                let mut r = lock(&requests);
                r.methods_seen(sniffer.pending_methods.drain(..));
                if !r.sniffing() {
                    tracing::debug!(port, "too many unanswered requests: not sniffing any more");
                }
            }
            let _ = program_w.shutdown().await;
        };
        let from_program = async {
            let mut sniffer = Sniffer::new(false);
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = program_r.read(&mut buf).await {
                if n == 0 || agent_w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                if !lock(&unanswered).sniffing() {
                    continue;
                }
                sniffer
                    .pending_methods
                    .extend(lock(&unanswered).methods.drain(..));
                for seen in sniffer.feed(&buf[..n]) {
                    if let Seen::Head(Head::Response { status, .. }) = seen {
                        if status < 200 {
                            continue;
                        }
                        let answered = lock(&unanswered).requests.pop_front();
                        if let Some(r) = answered {
                            self.traffic.emit(TrafficEvent::IncomingRequest {
                                time: now_ms(),
                                port,
                                method: r.method,
                                path: r.path,
                                headers: r.headers,
                                status,
                                duration_ms: r.since.elapsed().as_millis() as u64,
                                mode: "mirror".into(),
                                matched_filter: None,
                            });
                        }
                    }
                }
            }
            let _ = agent_w.shutdown().await;
        };
        tokio::join!(to_program, from_program);
    }

    /// Relays a delivered connection between the program and the agent.
    async fn relay<P, A>(&self, mut program: P, mut agent: A, port: u16, mode: TrafficMode)
    where
        P: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        if mode == TrafficMode::Mirror {
            // Stolen HTTP requests are reported by the agent, which routes them; mirrored ones
            // are read here, from the copy on its way to the program.
            self.relay_sniffing(program, agent, port).await;
        } else {
            let _ = tokio::io::copy_bidirectional(&mut program, &mut agent).await;
        }
    }

    /// Where the agent should deliver `port`'s connections (stolen ones, or copies) itself, if
    /// anywhere: only to a port's one listener (several take turns, which the session
    /// decides), never to `mirrord dump`, and not where the session re-encrypts
    /// (`https_delivery`).
    fn delivery_target(&self, port: u16) -> Option<SocketAddr> {
        if !self.direct_delivery || self.config.mode == IncomingMode::Off {
            return None;
        }
        if self.tls_delivery.is_some() && self.config.tls_port(port).is_some() {
            return None;
        }
        match lock(&self.listening).get(&port)?.listeners.as_slice() {
            [one] if one.observer.is_none() => Some(one.local),
            _ => None,
        }
    }

    /// Tells the agent where to deliver `port`'s connections when that changed. Called by the
    /// holder of `changes`, after the change.
    async fn update_delivery(&self, control: &AgentControl, port: u16) {
        let wanted = self.delivery_target(port);
        if lock(&self.delivering_to).get(&port).copied() == wanted {
            return;
        }
        match control
            .request(AgentRequest::DeliverTo { port, to: wanted })
            .await
        {
            Ok(AgentResponse::Error(e)) => tracing::warn!(port, "direct delivery: {e}"),
            Ok(_) => {
                let mut d = lock(&self.delivering_to);
                match wanted {
                    Some(to) => d.insert(port, to),
                    None => d.remove(&port),
                };
                tracing::debug!(port, ?wanted, "direct delivery");
            }
            // The agent keeps announcing, which always works.
            Err(e) => tracing::warn!(port, "direct delivery: {e:#}"),
        }
    }

    /// The real client and pod address of a connection from `source` to the program's
    /// `listener`, if the session or its agent delivered it.
    pub async fn peer_of(
        &self,
        control: &AgentControl,
        listener: SocketAddr,
        source: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)> {
        if let Some(found) = self.known_peer(source) {
            return Some(found);
        }
        let delivering = lock(&self.delivering_to).values().any(|l| *l == listener);
        if !delivering {
            return None;
        }
        // The agent says `Delivered` before it connects, but the program may accept before
        // that event is handled here. The entry usually arrives within microseconds; to tell a
        // connection that is not the agent's, wait (at the same time) until every event the
        // agent sent so far has been handled.
        let caught_up = async {
            let sent = control.events_sent_so_far().await.ok()?;
            let mut handled_rx = self.handled_tx.subscribe();
            handled_rx
                .wait_for(|handled| *handled >= sent)
                .await
                .ok()
                .map(|_| ())
        };
        let search = async {
            tokio::pin!(caught_up);
            loop {
                let added = self.delivered_added.notified();
                tokio::pin!(added);
                // Registered before the look, so an entry added right after it still wakes us.
                added.as_mut().enable();
                if let Some(found) = self.known_peer(source) {
                    return Some(found);
                }
                tokio::select! {
                    _ = &mut added => {}
                    done = &mut caught_up => {
                        done?;
                        return self.known_peer(source);
                    }
                }
            }
        };
        tokio::time::timeout(CATCH_UP_LIMIT, search)
            .await
            .ok()
            .flatten()
    }

    fn known_peer(&self, source: SocketAddr) -> Option<(SocketAddr, SocketAddr)> {
        if let Some(found) = lock(&self.peers).get(&source).copied() {
            return Some(found);
        }
        // Asked once, by the accept that took the connection.
        lock(&self.delivered).take(source)
    }

    /// Delivers what the agent announces until the agent's control channel closes.
    pub async fn run(
        self: Arc<Self>,
        mut event_rx: mpsc::Receiver<AgentEvent>,
        connector: AgentConnector,
    ) {
        while let Some(event) = event_rx.recv().await {
            match event {
                AgentEvent::Incoming {
                    id,
                    port,
                    mode,
                    peer,
                    local,
                } => {
                    let me = self.clone();
                    let connector = connector.clone();
                    tokio::spawn(async move {
                        me.deliver(&connector, id, port, mode, peer, local).await
                    });
                }
                AgentEvent::OutgoingConnection {
                    pid,
                    remote,
                    hostname,
                    error,
                } => {
                    tracing::debug!(pid, %remote, ?hostname, ?error, "outgoing connection");
                    self.traffic.emit(TrafficEvent::OutgoingConnection {
                        time: now_ms(),
                        host: hostname,
                        address: remote.ip().to_string(),
                        port: remote.port(),
                        protocol: "tcp".into(),
                        error: error.map(|e| std::io::Error::from_raw_os_error(e).to_string()),
                    });
                }
                AgentEvent::HttpRequest {
                    port,
                    mode,
                    method,
                    path,
                    headers,
                    status,
                    duration_ms,
                    filter,
                } => self.traffic.emit(TrafficEvent::IncomingRequest {
                    time: now_ms(),
                    port,
                    method,
                    path,
                    headers: headers.into_iter().collect(),
                    status,
                    duration_ms,
                    mode: mode_name(mode).into(),
                    matched_filter: filter,
                }),
                AgentEvent::Delivered {
                    port,
                    mode,
                    peer,
                    local,
                    source,
                } => {
                    lock(&self.delivered).insert(source, (peer, local), std::time::Instant::now());
                    self.delivered_added.notify_waiters();
                    tracing::debug!(port, %peer, %source, "incoming connection delivered by the agent");
                    self.traffic.emit(TrafficEvent::IncomingConnection {
                        time: now_ms(),
                        peer: peer.to_string(),
                        port,
                        mode: mode_name(mode).into(),
                    });
                }
            }
            // Invariant: bumped after the event's effects, so `peer_of` finds them.
            self.handled_tx.send_modify(|n| *n += 1);
        }
    }

    async fn deliver(
        &self,
        connector: &AgentConnector,
        id: u64,
        port: u16,
        mode: TrafficMode,
        peer: SocketAddr,
        local: SocketAddr,
    ) {
        let (target, observer) = match lock(&self.listening).get_mut(&port).and_then(|e| e.pick()) {
            Some((local, observer)) => (Some(local), observer),
            None => (None, None),
        };
        let channel = match connector.open(AgentChannel::Incoming { id }).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(port, "cannot open the incoming channel: {e:#}");
                return;
            }
        };
        if let Some(observer) = observer {
            let _ = observer
                .send(ObservedConnection {
                    port,
                    peer,
                    local,
                    channel,
                })
                .await;
            return;
        }
        // Nobody listens any more: closing the channel tells the agent at once.
        let Some(target) = target else { return };
        let socket = match if target.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        } {
            Ok(s) => s,
            Err(_) => return,
        };
        // Bind first so the source address is known, and recorded, before the program can
        // accept the connection and ask who it is.
        let loopback = SocketAddr::new(target.ip(), 0);
        let Ok(source) = socket.bind(loopback).and_then(|_| socket.local_addr()) else {
            return;
        };
        lock(&self.peers).insert(source, (peer, local));
        match socket.connect(target).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                tracing::debug!(port, %peer, ?mode, "incoming connection delivered");
                self.traffic.emit(TrafficEvent::IncomingConnection {
                    time: now_ms(),
                    peer: peer.to_string(),
                    port,
                    mode: mode_name(mode).into(),
                });
                // Invariant: on a TLS port the agent delivers only what it decrypted, so
                // `https_delivery: tls` encrypts every connection of such a port again.
                let tls = match &self.tls_delivery {
                    Some(tls) if self.config.tls_port(port).is_some() => Some(tls),
                    _ => None,
                };
                match tls {
                    Some(tls) => match tls.wrap(stream, channel).await {
                        Ok((program, agent)) => self.relay(program, agent, port, mode).await,
                        Err(e) => tracing::warn!(port, "https_delivery: {e:#}"),
                    },
                    None => self.relay(stream, channel, port, mode).await,
                }
            }
            Err(e) => tracing::warn!(port, %target, "cannot reach the program's listener: {e}"),
        }
        lock(&self.peers).remove(&source);
    }
}

fn mode_name(mode: TrafficMode) -> &'static str {
    match mode {
        TrafficMode::Mirror => "mirror",
        TrafficMode::Steal => "steal",
        TrafficMode::Observe => "observe",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_requests_are_bounded() {
        let mut u = Unanswered::default();
        for i in 0..(3 * MAX_UNANSWERED) {
            u.asked(WaitingRequest {
                method: "GET".into(),
                path: format!("/{i}"),
                headers: Default::default(),
                since: std::time::Instant::now(),
            });
            u.methods_seen(std::iter::once("GET".to_owned()));
            assert!(u.requests.len() <= MAX_UNANSWERED && u.methods.len() <= MAX_UNANSWERED);
        }
        assert!(!u.sniffing());
        assert!(u.requests.is_empty() && u.methods.is_empty());
    }

    #[test]
    fn answered_requests_keep_the_connection_sniffed() {
        let mut u = Unanswered::default();
        for i in 0..(3 * MAX_UNANSWERED) {
            u.asked(WaitingRequest {
                method: "GET".into(),
                path: format!("/{i}"),
                headers: Default::default(),
                since: std::time::Instant::now(),
            });
            assert_eq!(
                u.requests.pop_front().map(|r| r.path),
                Some(format!("/{i}"))
            );
        }
        assert!(u.sniffing());
    }
}
