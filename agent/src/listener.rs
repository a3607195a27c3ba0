//! The agent's socket: authentication of every connection, then one handler per channel.

use crate::dns::PodResolver;
use crate::incoming::{BoxIo, Client, IncomingState};
use crate::outgoing;
use anyhow::{Context, Result};
use mirrord_protocol::agent::{
    AgentChannel, AgentEvent, AgentHello, AgentMessage, AgentRequest, AgentResponse, AgentWelcome,
    ControlRequest,
};
use mirrord_protocol::codec::{read_frame_async, write_frame_async};
use mirrord_protocol::layer::{DataReply, LayerHello};
use mirrord_protocol::net::ConnectReply;
use mirrord_protocol::{version_compatible, PROTOCOL_VERSION};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, Semaphore};

/// What every connection handler shares.
pub struct AgentState {
    pub token: String,
    pub resolver: PodResolver,
    /// The target's first nameserver: DNS datagrams of the program go there.
    pub nameserver: Option<SocketAddr>,
    pub incoming: Arc<IncomingState>,
    /// Ids for control channels (subscribers of incoming traffic).
    pub next_client: std::sync::atomic::AtomicU64,
    /// Control channels' event senders, for events that belong to no subscription (flows of
    /// the direct data path). An agent serves one session, so any live channel is the right one.
    pub event_sinks: std::sync::Mutex<Vec<crate::traffic::TrafficTx>>,
    /// No target (an agent pod of its own): incoming traffic has no pod to come from.
    pub targetless: bool,
    /// How many control channels are open now; the communication timeout watches it.
    pub sessions: tokio::sync::watch::Sender<usize>,
    /// Bumped by a resuming control channel: every control channel opened before it ends.
    pub control_epoch: tokio::sync::watch::Sender<u64>,
    /// control channel --"the session ended"--> main (exits)
    pub shutdown: tokio::sync::Notify,
    /// The target's process, whose environment `AgentRequest::Env` returns.
    pub target_pid: Option<u32>,
    /// The target's `/etc/resolv.conf` and `/etc/hosts`, for `AgentRequest::ResolverFiles`.
    pub resolver_files: (String, String),
}

impl AgentState {
    fn emit(&self, event: AgentEvent) {
        let mut sinks = self.event_sinks.lock().unwrap_or_else(|p| p.into_inner());
        sinks.retain(|s| !s.is_closed());
        if let Some(sink) = sinks.first() {
            // Never waits: the traffic view never holds up a flow.
            sink.send(AgentMessage::Event(event));
        }
    }
}

/// A peer has this long to send its hello; a silent peer must not hold a task forever.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a resuming control channel waits for the channels it replaces to let go.
const RESUME_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests a single control channel may have in flight, so one client cannot make the agent
/// queue unbounded work.
const MAX_IN_FLIGHT: usize = 256;

/// Binds the unix socket readable and writable by its owner only (0600), replacing a stale file.
pub fn bind_private(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    // The umask closes the window between bind and chmod in which another user could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    widen_backlog(&listener);
    Ok(listener)
}

/// The accept queue of the agent's listeners: the standard library listens with a backlog of
/// 128, and a program that opens a thousand connections at once (each a channel or a data
/// connection of its own) overflowed it: the kernel dropped SYNs (`ListenOverflows`) and each
/// such connect waited for a retransmit (1 s and more). Listening again only resizes the queue;
/// the kernel caps it at `net.core.somaxconn`.
pub fn widen_backlog(listener: &impl std::os::fd::AsRawFd) {
    // SAFETY: listen on a socket we own that is already listening; no memory is passed.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        tracing::debug!("backlog stays: {}", std::io::Error::last_os_error());
    }
}

/// Where sessions reach the agent: a unix socket (local targets) or a TCP port on its pod's
/// loopback (Kubernetes targets, reached by port-forward).
pub enum AgentListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl AgentListener {
    async fn accept(&self) -> std::io::Result<BoxIo> {
        Ok(match self {
            // Following: a channel that carries a download moves its socket's registration to
            // the bulk runtime with the flow (no hand-over per readiness event).
            AgentListener::Unix(l) => Box::new(mirrord_relay::Following::new(l.accept().await?.0)),
            AgentListener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Box::new(mirrord_relay::Following::new(s))
            }
        })
    }
}

pub async fn serve(listener: AgentListener, state: Arc<AgentState>) -> Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, keep serving.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, state).await {
                tracing::debug!("connection ended: {e:#}");
            }
        });
    }
}

async fn handle(mut stream: BoxIo, state: Arc<AgentState>) -> Result<()> {
    let mut hello: AgentHello = tokio::time::timeout(HELLO_TIMEOUT, read_frame_async(&mut stream))
        .await
        .context("no hello in time")??;
    if hello.channel == AgentChannel::Spare {
        if !welcome(&mut stream, &hello, &state).await? {
            return Ok(());
        }
        // Invariant: a spare is authenticated before it may idle: only its session can hold
        // connections open here without the hello deadline.
        hello = read_frame_async(&mut stream)
            .await
            .context("a spare connection ended unused")?;
        if hello.channel == AgentChannel::Spare {
            write_frame_async(
                &mut stream,
                &AgentWelcome::Refused {
                    reason: "this connection is spare already".into(),
                },
            )
            .await?;
            return Ok(());
        }
    }
    if !welcome(&mut stream, &hello, &state).await? {
        return Ok(());
    }
    serve_channel(stream, hello.channel, state).await
}

/// Checks a hello and answers it; `false` when it was refused (the connection is done).
async fn welcome(stream: &mut BoxIo, hello: &AgentHello, state: &AgentState) -> Result<bool> {
    let refusal = if !version_compatible(hello.version) {
        Some(format!(
            "protocol version {} is not supported (agent speaks {PROTOCOL_VERSION})",
            hello.version
        ))
    } else if !mirrord_protocol::token_eq(&hello.token, &state.token) {
        Some("invalid session token".to_owned())
    } else {
        None
    };
    if let Some(reason) = refusal {
        tracing::warn!("refused a client: {reason}");
        write_frame_async(stream, &AgentWelcome::Refused { reason }).await?;
        return Ok(false);
    }
    write_frame_async(
        stream,
        &AgentWelcome::Welcome {
            version: PROTOCOL_VERSION,
            agent_pid: std::process::id(),
        },
    )
    .await?;
    Ok(true)
}

/// Serves one welcomed connection as the channel its hello named.
async fn serve_channel(stream: BoxIo, channel: AgentChannel, state: Arc<AgentState>) -> Result<()> {
    match channel {
        // `handle` reads a spare's second hello instead and refuses a second spare.
        AgentChannel::Spare => Ok(()),
        AgentChannel::Control => control(stream, state).await,
        AgentChannel::ResumeControl => {
            // The session lost its connection; a channel of it may still look open here (a
            // half-open TCP behind a dead port-forward). End those and wait until they released
            // their subscriptions, else the session's own steal would refuse its re-subscribe.
            state.control_epoch.send_modify(|e| *e += 1);
            let mut sessions = state.sessions.subscribe();
            if tokio::time::timeout(RESUME_RELEASE_TIMEOUT, sessions.wait_for(|n| *n == 0))
                .await
                .is_err()
            {
                tracing::warn!("earlier control channels did not end in time");
            }
            tracing::info!("the session resumed");
            control(stream, state).await
        }
        AgentChannel::Tcp { remote } => outgoing::tcp(stream, remote).await,
        AgentChannel::Udp { remote, dns } => {
            let remote = if dns {
                state.nameserver.unwrap_or(remote)
            } else {
                remote
            };
            outgoing::udp(stream, remote).await
        }
        AgentChannel::Incoming { id } => {
            state.incoming.attach(id, stream);
            Ok(())
        }
    }
}

/// The control channel: requests carry ids and are served concurrently; answers go back in
/// completion order through one writer.
async fn control(stream: BoxIo, state: Arc<AgentState>) -> Result<()> {
    // Counted while it is open: the communication timeout starts when the last one closes.
    state.sessions.send_modify(|n| *n += 1);
    let _counted = SessionCount(state.clone());
    // Invariant: a control channel ends when a later one resumes the session, so a session
    // holds its subscriptions through one channel at a time.
    let mut epoch_rx = state.control_epoch.subscribe();
    epoch_rx.borrow_and_update();
    let (mut reader, writer) = tokio::io::split(stream);
    // request tasks, announces --AgentMessage--> writer task (written at once)
    let (message_tx, message_rx) = mpsc::channel::<AgentMessage>(64);
    // flows --traffic-view events--> writer task (written in batches)
    let (traffic_tx, traffic_rx) = crate::traffic::channel();
    let writer_task = tokio::spawn(write_messages(writer, message_rx, traffic_rx));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let client = Client {
        id: state
            .next_client
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        message_tx: message_tx.clone(),
        traffic_tx: traffic_tx.clone(),
        gone: Default::default(),
    };
    state
        .event_sinks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(traffic_tx);
    let result = loop {
        let read = tokio::select! {
            read = read_frame_async::<ControlRequest, _>(&mut reader) => read,
            _ = epoch_rx.changed() => {
                tracing::info!("a resumed session replaces this control channel");
                break Ok(());
            }
        };
        let request = match read {
            Ok(r) => r,
            Err(e) if e.is_closed() => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        // The semaphore is never closed, so acquiring can only wait, not fail.
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let state = state.clone();
        let message_tx = message_tx.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let body = match request.body {
                AgentRequest::Resolve { name, family } => {
                    AgentResponse::Resolved(state.resolver.resolve(&name, family).await)
                }
                AgentRequest::ReverseResolve { ip } => {
                    AgentResponse::ReverseResolved(state.resolver.reverse(ip).await)
                }
                AgentRequest::Subscribe { .. } if state.targetless => AgentResponse::Error(
                    "a targetless agent has no pod whose incoming traffic it could receive: \
                     choose a target (-t pod/NAME, deployment/NAME, ...) or set \
                     feature.network.incoming to \"off\""
                        .into(),
                ),
                AgentRequest::Subscribe {
                    port,
                    mode,
                    filter,
                    tls,
                    capture,
                } => {
                    match state
                        .incoming
                        .subscribe(&client, port, mode, filter, tls, capture)
                        .await
                    {
                        Ok(()) => AgentResponse::Subscribed,
                        Err(e) => AgentResponse::Error(format!("{e:#}")),
                    }
                }
                AgentRequest::Unsubscribe { port } => {
                    state.incoming.unsubscribe(client.id, port).await;
                    AgentResponse::Unsubscribed
                }
                AgentRequest::DeliverTo { port, to } => {
                    state.incoming.deliver_to(client.id, port, to);
                    AgentResponse::Subscribed
                }
                AgentRequest::Ping => AgentResponse::Pong,
                AgentRequest::Shutdown => {
                    tracing::info!("the session ended, exiting");
                    // notify_one keeps the permit if main is not waiting yet.
                    state.shutdown.notify_one();
                    AgentResponse::ShuttingDown
                }
                AgentRequest::Env => crate::env::target_environment(state.target_pid),
                AgentRequest::ResolverFiles => AgentResponse::ResolverFiles {
                    resolv_conf: state.resolver_files.0.clone(),
                    hosts: state.resolver_files.1.clone(),
                },
            };
            let _ = message_tx
                .send(AgentMessage::Response {
                    id: request.id,
                    body,
                })
                .await;
            drop(permit);
        });
    };
    state.incoming.client_gone(&client).await;
    // Connections still being served hold copies of the event sender; nobody reads events of a
    // closed channel, so the writer stops now rather than when they end.
    writer_task.abort();
    result
}

/// Writes a control channel's messages: answers and announces at once; traffic-view events
/// (one per request or connection) in batches, so a busy flow does not wake the session for
/// every request.
///
/// Invariant: whatever was queued as traffic before a message is written before it. A ping's
/// answer therefore follows every event sent before the ping (the session's accept relies on
/// it, `IncomingRouter::peer_of`).
async fn write_messages<W: tokio::io::AsyncWrite + Unpin>(
    mut writer: W,
    mut message_rx: mpsc::Receiver<AgentMessage>,
    traffic: crate::traffic::TrafficRx,
) {
    let crate::traffic::TrafficRx {
        rx: mut traffic_rx,
        full,
    } = traffic;
    let mut held: Vec<u8> = Vec::new();
    // Set while a batch is open: its events wait in the queue until then.
    let mut flush_at: Option<tokio::time::Instant> = None;
    let hold = |msg: &AgentMessage, held: &mut Vec<u8>| match mirrord_protocol::codec::encode(msg) {
        Ok(frame) => held.extend_from_slice(&frame),
        Err(e) => tracing::warn!("a message that cannot be encoded: {e}"),
    };
    let hold_queued = |traffic_rx: &mut mpsc::Receiver<AgentMessage>, held: &mut Vec<u8>| {
        while let Ok(event) = traffic_rx.try_recv() {
            hold(&event, held);
        }
    };
    loop {
        let batch_due = async {
            match flush_at {
                Some(at) => tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = full.notified() => {}
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            msg = message_rx.recv() => {
                let Some(msg) = msg else { break };
                hold_queued(&mut traffic_rx, &mut held);
                hold(&msg, &mut held);
            }
            // Invariant: the queue is listened to only while no batch is open, so a flow's
            // events wake this task once per batch, not once each.
            event = traffic_rx.recv(), if flush_at.is_none() => {
                // The control channel keeps a sender, so this ends only with the channel.
                let Some(event) = event else { break };
                hold(&event, &mut held);
                flush_at = Some(tokio::time::Instant::now() + crate::traffic::BATCH);
                continue;
            }
            () = batch_due => hold_queued(&mut traffic_rx, &mut held),
        }
        if !held.is_empty() {
            use tokio::io::AsyncWriteExt;
            let written = async {
                writer.write_all(&held).await?;
                writer.flush().await
            };
            if written.await.is_err() {
                break;
            }
            held.clear();
        }
        flush_at = None;
    }
}

/// Decrements the open control channel count when a channel ends, however it ends.
struct SessionCount(Arc<AgentState>);

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.sessions.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Resolves once no control channel has been open for `timeout` (counting from now if none is
/// open yet). The agent cannot tell a session that ended from one whose connection dropped, so
/// this is how an agent whose session vanished (its `mirrord` killed) goes away.
pub async fn no_session_for(state: Arc<AgentState>, timeout: Duration) {
    let mut sessions = state.sessions.subscribe();
    loop {
        if *sessions.borrow_and_update() == 0 {
            tokio::select! {
                _ = tokio::time::sleep(timeout) => return,
                // Any change (a session arrived) restarts the wait.
                changed = sessions.changed() => if changed.is_err() { return },
            }
        } else if sessions.changed().await.is_err() {
            return;
        }
    }
}

/// The direct data path of a local target: the agent's TCP listener on the developer machine's
/// loopback (bound before the agent entered the target's namespace). A program's outgoing TCP
/// flow connects here with a data hello, and the agent splices it to its connection in the
/// target: one relay instead of two.
pub async fn serve_data(listener: tokio::net::TcpListener, state: Arc<AgentState>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept on the data listener failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = data_connection(stream, state).await {
                tracing::debug!("data connection ended: {e:#}");
            }
        });
    }
}

async fn data_connection(mut stream: tokio::net::TcpStream, state: Arc<AgentState>) -> Result<()> {
    let hello: LayerHello = tokio::time::timeout(HELLO_TIMEOUT, read_frame_async(&mut stream))
        .await
        .context("no hello in time")??;
    let LayerHello::Tcp {
        version,
        token,
        pid,
        remote,
        hostname,
    } = hello
    else {
        let reason = "a control hello on a data listener".to_owned();
        write_frame_async(&mut stream, &DataReply::Refused { reason }).await?;
        return Ok(());
    };
    let refusal = if !version_compatible(version) {
        Some(format!(
            "protocol version {version} is not supported (agent speaks {PROTOCOL_VERSION})"
        ))
    } else if !mirrord_protocol::token_eq(&token, &state.token) {
        Some("invalid session token".to_owned())
    } else {
        None
    };
    if let Some(reason) = refusal {
        tracing::warn!("refused a data connection: {reason}");
        write_frame_async(&mut stream, &DataReply::Refused { reason }).await?;
        return Ok(());
    }
    let _ = stream.set_nodelay(true);
    let (target, reply) = outgoing::connect(remote).await;
    write_frame_async(&mut stream, &DataReply::Connect(reply)).await?;
    state.emit(AgentEvent::OutgoingConnection {
        pid,
        remote,
        hostname,
        error: match reply {
            ConnectReply::Failed { errno } => Some(errno),
            ConnectReply::Connected { .. } => None,
        },
    });
    if let Some(target) = target {
        outgoing::splice_tcp(&stream, &target).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic;

    fn event(pid: u32) -> AgentMessage {
        AgentMessage::Event(AgentEvent::OutgoingConnection {
            pid,
            remote: "10.0.0.1:80".parse().expect("a literal address"),
            hostname: None,
            error: None,
        })
    }

    async fn read(session: &mut tokio::io::DuplexStream) -> AgentMessage {
        read_frame_async::<AgentMessage, _>(session)
            .await
            .expect("a frame")
    }

    fn pid_of(m: &AgentMessage) -> Option<u32> {
        match m {
            AgentMessage::Event(AgentEvent::OutgoingConnection { pid, .. }) => Some(*pid),
            _ => None,
        }
    }

    /// The clock is paused: it moves only when every task waits on it, so "now" when a write
    /// arrives says whether the writer waited out the batch time.
    #[tokio::test(start_paused = true)]
    async fn traffic_waits_for_its_batch_unless_full_or_a_message_follows() {
        let (to_session, mut session) = tokio::io::duplex(1 << 20);
        let (message_tx, message_rx) = mpsc::channel(8);
        let (traffic_tx, traffic_rx) = traffic::channel();
        tokio::spawn(write_messages(to_session, message_rx, traffic_rx));

        // One event: written when its batch is due, not before.
        let start = tokio::time::Instant::now();
        traffic_tx.send(event(1));
        assert_eq!(pid_of(&read(&mut session).await), Some(1));
        assert_eq!(start.elapsed(), traffic::BATCH);

        // A full batch: written at once, in order.
        let start = tokio::time::Instant::now();
        for pid in 0..traffic::BATCH_LEN as u32 {
            traffic_tx.send(event(pid));
        }
        for pid in 0..traffic::BATCH_LEN as u32 {
            assert_eq!(pid_of(&read(&mut session).await), Some(pid));
        }
        assert_eq!(start.elapsed(), std::time::Duration::ZERO);

        // Events queued before a message go out before it, at once.
        let start = tokio::time::Instant::now();
        traffic_tx.send(event(7));
        tokio::task::yield_now().await;
        message_tx
            .send(AgentMessage::Response {
                id: 9,
                body: AgentResponse::Pong,
            })
            .await
            .expect("the writer runs");
        assert_eq!(pid_of(&read(&mut session).await), Some(7));
        assert!(matches!(
            read(&mut session).await,
            AgentMessage::Response { id: 9, .. }
        ));
        assert_eq!(start.elapsed(), std::time::Duration::ZERO);
    }
}
