//! The agent, seen from the server: starting it for a local target, opening channels to it
//! (a unix socket, or a port-forward for an agent in a cluster), and the multiplexed control
//! channel.

use anyhow::{anyhow, bail, Context, Result};
use mirrord_protocol::agent::{
    AgentChannel, AgentEvent, AgentHello, AgentMessage, AgentRequest, AgentResponse, AgentWelcome,
    ControlRequest,
};
use mirrord_protocol::codec::{read_frame_async, write_frame_async};
use mirrord_protocol::config::TargetPath;
use mirrord_protocol::PROTOCOL_VERSION;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

/// How long a cluster agent may take to acknowledge the end of its session.
const SHUTDOWN_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the end of a session waits for the API server to delete a cluster agent.
const KUBE_DELETE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the agent may take to report ready.
pub const AGENT_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agent may take to answer a channel's hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the agent may take to answer a control request. Longer than its own slowest
/// work (a lookup through the pod's resolver, a rule change waiting for the xtables lock), and
/// shorter than the layer's 30 s bound on its own request, so the program hears the real error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(25);

/// A byte stream to the agent: a unix socket or a port-forward stream.
pub trait AgentIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AgentIo for T {}
pub type AgentStream = Box<dyn AgentIo>;

/// Opens authenticated channels to one agent. This is the transport seam: a unix socket for
/// agents on this machine, a port-forward of the agent pod's port for agents in a cluster.
#[derive(Clone)]
pub enum AgentConnector {
    Unix { path: PathBuf, token: String },
    PortForward(Arc<crate::kube::spares::AgentPortForward>),
}

impl AgentConnector {
    /// A new connection to the agent, past the hello.
    pub async fn open(&self, channel: AgentChannel) -> Result<AgentStream> {
        match self {
            AgentConnector::Unix { path, token } => {
                let stream = UnixStream::connect(path)
                    .await
                    .with_context(|| format!("the agent is unreachable at {}", path.display()))?;
                let mut stream: AgentStream = Box::new(stream);
                hello_exchange(&mut stream, token, channel, HELLO_TIMEOUT).await?;
                Ok(stream)
            }
            AgentConnector::PortForward(transport) => transport.open(channel).await,
        }
    }
}

/// The agent said no to a hello (an error of [`hello_exchange`] that a retry cannot fix).
#[derive(Debug, thiserror::Error)]
#[error("the agent refused us: {0}")]
pub struct Refused(pub String);

/// Says `hello` for `channel` on `stream` and reads the welcome, within `limit` (a stuck agent
/// must not hold the caller).
pub async fn hello_exchange(
    stream: &mut AgentStream,
    token: &str,
    channel: AgentChannel,
    limit: Duration,
) -> Result<()> {
    let hello = AgentHello {
        version: PROTOCOL_VERSION,
        token: token.to_owned(),
        channel,
    };
    let welcome = tokio::time::timeout(limit, async {
        write_frame_async(stream, &hello).await?;
        read_frame_async::<AgentWelcome, _>(stream).await
    })
    .await
    .map_err(|_| {
        anyhow!(
            "the agent did not answer the hello within {}s",
            limit.as_secs_f32()
        )
    })?;
    match welcome {
        Ok(AgentWelcome::Welcome { .. }) => Ok(()),
        Ok(AgentWelcome::Refused { reason }) => Err(Refused(reason).into()),
        Err(e) => Err(anyhow!("the agent closed the connection: {e}")),
    }
}

/// The session's agent: a process on this machine, or a Job or ephemeral container in a
/// cluster. Both stop with the session; both report their death.
pub enum AgentHandle {
    Local(AgentProcess),
    Kube(crate::kube::agent_pod::KubeAgent),
}

impl AgentHandle {
    /// The agent's process id, for local agents.
    pub fn pid(&self) -> Option<u32> {
        match self {
            AgentHandle::Local(p) => Some(p.pid),
            AgentHandle::Kube(_) => None,
        }
    }

    /// Where the agent runs, for people.
    pub fn describe(&self) -> String {
        match self {
            AgentHandle::Local(p) => format!("agent pid {}", p.pid),
            AgentHandle::Kube(k) => match &k.job {
                Some(job) => format!("agent Job {job} (pod {}) in {}", k.pod, k.namespace),
                None => format!(
                    "agent container {} of pod {} in {}",
                    k.container, k.pod, k.namespace
                ),
            },
        }
    }

    /// Why the agent is gone, if it is, without waiting. A cluster agent is gone when the
    /// session's control channel to it has closed.
    pub fn try_exit(&mut self, control: &AgentControl) -> Option<String> {
        match self {
            AgentHandle::Local(p) => p.try_exit().map(|s| format!("the agent exited ({s})")),
            AgentHandle::Kube(k) => control.is_closed().then(|| {
                format!(
                    "the connection to the agent in pod {} was lost and could not be made \
                     again within the agent's communication timeout",
                    k.pod
                )
            }),
        }
    }

    /// Resolves with why, when the agent is gone: its process exited, or (in a cluster) its
    /// control channel closed or its pod went away.
    pub async fn wait_exit(&mut self, control: &AgentControl) -> String {
        match self {
            AgentHandle::Local(p) => match p.wait_exit().await {
                Ok(s) => format!("the agent exited ({s})"),
                Err(e) => format!("the agent is gone ({e})"),
            },
            AgentHandle::Kube(k) => {
                tokio::select! {
                    _ = control.closed() => format!(
                        "the connection to the agent in pod {} was lost and could not be made \
                         again within the agent's communication timeout (the agent removes its \
                         rules and exits then)",
                        k.pod
                    ),
                    why = k.wait_gone() => why,
                }
            }
        }
    }

    /// Ends the agent: a local one exits (removing its rules); a cluster one is told the session
    /// ended (it removes its rules and exits, which is the only way an ephemeral container
    /// goes), then its Job and pod are deleted.
    pub async fn stop(self, control: Option<&AgentControl>) {
        match self {
            AgentHandle::Local(p) => p.stop().await,
            AgentHandle::Kube(k) => {
                if let Some(control) = control {
                    control.end();
                    // Best effort: an agent that is already gone cannot answer, and the Job's
                    // deletion (or the communication timeout) ends it anyway.
                    // The agent removes its rules before it exits, and its connection closes
                    // when it exits: waiting for that (bounded) keeps the Job's deletion from
                    // killing it halfway, which would leave the rules to its guard, a moment
                    // later than the pod's clients expect.
                    let _ = tokio::time::timeout(SHUTDOWN_ANSWER_TIMEOUT, async {
                        if control.request(AgentRequest::Shutdown).await.is_ok() {
                            control.closed().await;
                        }
                    })
                    .await;
                }
                // Bounded: Ctrl-C must end mirrord even when the API server stopped answering;
                // the Job's TTL (and the agent's communication timeout) remove it then.
                if tokio::time::timeout(KUBE_DELETE_TIMEOUT, k.delete())
                    .await
                    .is_err()
                {
                    eprintln!(
                        "mirrord: the API server did not answer the deletion of the agent {} within {}s; \
                         the cluster removes it after its TTL",
                        k.job.as_deref().unwrap_or(&k.pod),
                        KUBE_DELETE_TIMEOUT.as_secs()
                    );
                }
            }
        }
    }
}

/// A running agent process on this machine.
pub struct AgentProcess {
    child: Child,
    /// Held open: the agent exits when it reads end-of-file, so it never outlives the server.
    lifeline: Option<ChildStdin>,
    pub pid: u32,
    pub socket: PathBuf,
    /// The agent's own loopback data listeners (the direct data path), from its ready line.
    pub data_addrs: Vec<std::net::SocketAddr>,
    /// Last lines the agent wrote to stderr, for error messages.
    stderr_tail: Arc<Mutex<Vec<String>>>,
}

impl AgentProcess {
    /// Starts `mirrord-agent` for a local target and waits for its ready line.
    pub async fn spawn(
        agent_bin: &Path,
        target: &TargetPath,
        socket: PathBuf,
        token: &str,
    ) -> Result<AgentProcess> {
        match target {
            TargetPath::Pid(_) | TargetPath::Netns(_) => {}
            other => bail!("target {other} is in a cluster: its agent is not a local process"),
        }
        let mut child = Command::new(agent_bin)
            .arg("--target")
            .arg(target.to_string())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--exit-on-stdin-eof")
            .arg("--data-listen")
            .env(crate::session::AGENT_TOKEN_ENV, token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a signal to the caller's group (Ctrl-C in a terminal, a
            // supervisor killing the group) must not take the agent down before the session
            // ends; it exits when its stdin closes and removes its redirect rules on the way.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the agent {}", agent_bin.display()))?;
        let pid = child.id().context("the agent exited at once")?;
        // Spawned with piped stdio just above, so all three are present.
        let lifeline = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let tail = stderr_tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "mirrord_agent", "{line}");
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() >= 20 {
                    t.remove(0);
                }
                t.push(line);
            }
        });
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let ready = tokio::time::timeout(AGENT_START_TIMEOUT, stdout.read_line(&mut line)).await;
        let mut agent = AgentProcess {
            child,
            lifeline: Some(lifeline),
            pid,
            socket,
            data_addrs: Vec::new(),
            stderr_tail,
        };
        match ready {
            Ok(Ok(n)) if n > 0 && line.contains("ready") => {
                agent.data_addrs = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("data="))
                    .map(|list| list.split(',').filter_map(|a| a.parse().ok()).collect())
                    .unwrap_or_default();
                // Keep draining stdout so the agent never blocks on a full pipe.
                tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = stdout.read_to_end(&mut sink).await;
                });
                Ok(agent)
            }
            Ok(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), agent.child.wait()).await;
                // Give the stderr reader a moment to collect the last words.
                tokio::task::yield_now().await;
                bail!("the agent failed to start: {}", agent.last_words().await)
            }
            Err(_) => bail!(
                "the agent did not become ready within {}s: {}",
                AGENT_START_TIMEOUT.as_secs(),
                agent.last_words().await
            ),
        }
    }

    /// The agent's last stderr lines, for the user.
    pub async fn last_words(&self) -> String {
        // The stderr task may still be reading the final lines of an exiting agent.
        for _ in 0..20 {
            if !self
                .stderr_tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_empty() {
            "it printed nothing".into()
        } else {
            t.join("\n")
        }
    }

    /// Ends the agent and waits for it. Closing its lifeline lets it exit cleanly, removing its
    /// redirect rules itself before it goes, so the target serves its ports again by the time
    /// this returns; an agent that does not go in time is killed (and its guard cleans up).
    pub async fn stop(mut self) {
        drop(self.lifeline.take());
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// The agent's exit status if it has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Resolves when the agent process exits.
    pub async fn wait_exit(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }
}

/// Answer slots by request id; `None` once the channel is closed, so that no caller can wait on
/// a channel that will never answer.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<AgentResponse>>>>>;

fn lock_pending(
    p: &Pending,
) -> std::sync::MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<AgentResponse>>>> {
    p.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the control channel to the agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Connected: requests go to the agent.
    Up,
    /// The connection dropped; a new one is being opened. Requests fail at once (a lookup with
    /// a temporary error) rather than wait for an agent that cannot hear them.
    Reconnecting,
    /// For good: the agent is gone or could not be reached again in time.
    Gone,
}

/// How a dropped control channel is re-opened: attempts with growing pauses until
/// `give_up_after` has passed since the drop (the agent's communication timeout, after which
/// it has removed its rules and exited, so there is nothing to resume).
#[derive(Debug, Clone, Copy)]
pub struct Reconnect {
    pub give_up_after: Duration,
}

/// How long a keep-alive ping may go unanswered before its connection counts as dropped.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// First pause between reconnect attempts; it doubles up to [`RECONNECT_MAX_PAUSE`].
const RECONNECT_FIRST_PAUSE: Duration = Duration::from_millis(100);
const RECONNECT_MAX_PAUSE: Duration = Duration::from_secs(1);

/// The control channel to the agent. Requests from many layer connections share it; answers are
/// matched by id. With a [`Reconnect`] policy it survives a dropped connection: it opens a new
/// one ([`AgentChannel::ResumeControl`]) and carries on with the same agent.
#[derive(Clone)]
pub struct AgentControl {
    /// callers --(id, request)--> the connection's writer. Bounded: when full, callers wait
    /// (within their request timeout) for the writer.
    request_tx: mpsc::Sender<ControlRequest>,
    /// Invariant: a slot lives from its request until its answer, the connection's end or the
    /// request's timeout, whichever comes first; so an agent that never answers (or a
    /// connection that dropped) leaves nothing behind.
    pending: Pending,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    timeout: Duration,
    /// supervisor task --link state--> requests, the session, whoever watches the agent
    link_rx: tokio::sync::watch::Receiver<Link>,
    /// Set when the session ends the agent: its connection closing then is no drop.
    ending: Arc<std::sync::atomic::AtomicBool>,
    /// keep-alive --"this connection is dead (a ping went unanswered)"--> supervisor
    stale: Arc<tokio::sync::Notify>,
    /// How many events the agent's connections have handed to the event receiver so far.
    events_forwarded: Arc<std::sync::atomic::AtomicU64>,
}

impl AgentControl {
    /// Opens the channel; the receiver gets the events the agent pushes (incoming connections).
    pub async fn open(
        connector: &AgentConnector,
    ) -> Result<(AgentControl, mpsc::Receiver<AgentEvent>)> {
        Self::open_with(connector, REQUEST_TIMEOUT, None).await
    }

    /// [`AgentControl::open`] with another bound on each request.
    pub async fn open_with_timeout(
        connector: &AgentConnector,
        timeout: Duration,
    ) -> Result<(AgentControl, mpsc::Receiver<AgentEvent>)> {
        Self::open_with(connector, timeout, None).await
    }

    /// Opens the channel; with `reconnect`, a dropped connection is re-opened (see [`Link`]).
    pub async fn open_with(
        connector: &AgentConnector,
        timeout: Duration,
        reconnect: Option<Reconnect>,
    ) -> Result<(AgentControl, mpsc::Receiver<AgentEvent>)> {
        let stream = connector.open(AgentChannel::Control).await?;
        let (link_tx, link_rx) = tokio::sync::watch::channel(Link::Up);
        let (request_tx, request_rx) = mpsc::channel::<ControlRequest>(256);
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        // agent --events--> session (incoming connections to deliver). Bounded: when full, this
        // channel's reader waits, and the agent's own queue towards us fills; the agent then
        // serves announced connections from the target itself (its pick-up timeout). It
        // outlives each connection: the session's receiver stays the same across reconnects.
        let (event_tx, event_rx) = mpsc::channel::<AgentEvent>(1024);
        let ending = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stale = Arc::new(tokio::sync::Notify::new());
        let events_forwarded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(supervise(
            stream,
            request_rx,
            LinkParts {
                connector: connector.clone(),
                reconnect,
                ending: ending.clone(),
                stale: stale.clone(),
                pending: pending.clone(),
                event_tx,
                events_forwarded: events_forwarded.clone(),
                link_tx,
            },
        ));
        Ok((
            AgentControl {
                request_tx,
                pending,
                next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
                timeout,
                link_rx,
                ending,
                stale,
                events_forwarded,
            },
            event_rx,
        ))
    }

    /// How many events the receiver has been handed once every event the agent sent before
    /// this call is among them (a ping: the agent answers it after what it queued before, and
    /// the reader hands events over in order). A caller that counts the events it handled can
    /// then wait for that count.
    pub async fn events_sent_so_far(&self) -> Result<u64> {
        self.request(AgentRequest::Ping).await?;
        Ok(self
            .events_forwarded
            .load(std::sync::atomic::Ordering::Acquire))
    }

    /// The session is ending its agent: from now on a closed connection is not reconnected.
    pub fn end(&self) {
        self.ending
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The state of the connection to the agent, as it changes.
    pub fn link(&self) -> tokio::sync::watch::Receiver<Link> {
        self.link_rx.clone()
    }

    /// Pings the agent every `every` while the channel is used by anyone else, so that an idle
    /// control channel is not closed by a proxy or load balancer on the way (a port-forward
    /// passes through the API server and whatever is in front of it).
    pub fn keep_alive(&self, every: Duration) {
        // Weak: the pings must not keep the channel open once the session dropped it.
        let request_tx = self.request_tx.downgrade();
        let (pending, next_id, link_rx, ending, stale, events_forwarded) = (
            self.pending.clone(),
            self.next_id.clone(),
            self.link_rx.clone(),
            self.ending.clone(),
            self.stale.clone(),
            self.events_forwarded.clone(),
        );
        // A ping is answered by the agent's task at once: one that takes this long means the
        // connection died without a word (a port-forward whose TCP went silent).
        let timeout = self.timeout.min(PING_TIMEOUT);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(request_tx) = request_tx.upgrade() else {
                    return;
                };
                let pinger = AgentControl {
                    request_tx,
                    pending: pending.clone(),
                    next_id: next_id.clone(),
                    timeout,
                    link_rx: link_rx.clone(),
                    ending: ending.clone(),
                    stale: stale.clone(),
                    events_forwarded: events_forwarded.clone(),
                };
                let up = *link_rx.borrow() == Link::Up;
                match pinger.request(AgentRequest::Ping).await {
                    Ok(_) => {}
                    // A failed ping while reconnecting is expected; only a gone agent ends them.
                    Err(_) if pinger.is_closed() => return,
                    Err(e) if up && *link_rx.borrow() == Link::Up => {
                        tracing::warn!("keep-alive: {e:#}; dropping the connection");
                        // notify_waiters: no permit is kept for the next connection.
                        stale.notify_waiters();
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// Whether the channel to the agent has closed for good.
    pub fn is_closed(&self) -> bool {
        *self.link_rx.borrow() == Link::Gone
    }

    /// Resolves once the channel to the agent has closed for good.
    pub async fn closed(&self) {
        let mut rx = self.link_rx.clone();
        // An error means the supervisor task is gone, which is a close too.
        let _ = rx.wait_for(|l| *l == Link::Gone).await;
    }

    pub async fn request(&self, body: AgentRequest) -> Result<AgentResponse> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        if *self.link_rx.borrow() == Link::Reconnecting {
            bail!("the connection to the agent dropped; reconnecting");
        }
        match lock_pending(&self.pending).as_mut() {
            Some(map) => map.insert(id, answer_tx),
            None => bail!("the agent is gone"),
        };
        let exchange = async {
            self.request_tx
                .send(ControlRequest { id, body })
                .await
                .map_err(|_| anyhow!("the agent is gone"))?;
            answer_rx.await.map_err(|_| anyhow!("the agent is gone"))
        };
        let result = tokio::time::timeout(self.timeout, exchange).await;
        if let Some(map) = lock_pending(&self.pending).as_mut() {
            map.remove(&id);
        }
        result.map_err(|_| {
            anyhow!(
                "the agent did not answer within {}s (it may be stuck or overloaded)",
                self.timeout.as_secs_f32()
            )
        })?
    }
}

/// What the control channel's supervisor task works with, besides the connection and requests.
struct LinkParts {
    connector: AgentConnector,
    reconnect: Option<Reconnect>,
    ending: Arc<std::sync::atomic::AtomicBool>,
    stale: Arc<tokio::sync::Notify>,
    pending: Pending,
    event_tx: mpsc::Sender<AgentEvent>,
    events_forwarded: Arc<std::sync::atomic::AtomicU64>,
    link_tx: tokio::sync::watch::Sender<Link>,
}

/// Runs the control channel's connections, one at a time: the first, then (with `reconnect`)
/// each one that replaces a dropped one.
async fn supervise(
    mut stream: AgentStream,
    mut request_rx: mpsc::Receiver<ControlRequest>,
    link: LinkParts,
) {
    let LinkParts {
        connector,
        reconnect,
        ending,
        stale,
        pending,
        event_tx,
        events_forwarded,
        link_tx,
    } = link;
    loop {
        let session_alive = tokio::select! {
            alive = serve_connection(stream, &mut request_rx, &pending, (&event_tx, &events_forwarded)) => alive,
            // The keep-alive found the connection dead: treated as a drop.
            _ = stale.notified() => true,
        };
        // Invariant: nothing asked of a dead connection stays waiting or gets sent later. The
        // callers hear the drop now; requests still queued would reach the next connection
        // after their callers gave up (a subscription nobody knows of).
        if let Some(map) = lock_pending(&pending).as_mut() {
            map.clear();
        }
        while request_rx.try_recv().is_ok() {}
        let ended = ending.load(std::sync::atomic::Ordering::Relaxed);
        let Some(policy) = reconnect.filter(|_| session_alive && !ended) else {
            break;
        };
        link_tx.send_replace(Link::Reconnecting);
        tracing::warn!("the connection to the agent dropped; reconnecting");
        match reopen(&connector, policy, &ending).await {
            Some(s) => {
                // Requests that raced the drop were answered with errors already.
                while request_rx.try_recv().is_ok() {}
                stream = s;
                tracing::info!("reconnected to the agent");
                link_tx.send_replace(Link::Up);
            }
            None => break,
        }
    }
    // Dropping the senders wakes every waiting caller with an error.
    lock_pending(&pending).take();
    link_tx.send_replace(Link::Gone);
}

/// Opens a resuming control channel, with growing pauses, until `policy` gives up.
async fn reopen(
    connector: &AgentConnector,
    policy: Reconnect,
    ending: &std::sync::atomic::AtomicBool,
) -> Option<AgentStream> {
    let deadline = tokio::time::Instant::now() + policy.give_up_after;
    let mut pause = RECONNECT_FIRST_PAUSE;
    loop {
        if ending.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let attempt =
            tokio::time::timeout_at(deadline, connector.open(AgentChannel::ResumeControl));
        match attempt.await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) => tracing::debug!("reconnecting to the agent: {e:#}"),
            Err(_) => {}
        }
        if tokio::time::Instant::now() + pause >= deadline {
            tracing::warn!(
                "the agent could not be reached again within {}s; giving up",
                policy.give_up_after.as_secs()
            );
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECONNECT_MAX_PAUSE);
    }
}

/// Carries one connection's requests and answers until it ends. False when the session no
/// longer listens to the agent's events (nothing to reconnect for).
async fn serve_connection(
    stream: AgentStream,
    request_rx: &mut mpsc::Receiver<ControlRequest>,
    pending: &Pending,
    (event_tx, events_forwarded): (&mpsc::Sender<AgentEvent>, &std::sync::atomic::AtomicU64),
) -> bool {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async {
        while let Some(request) = request_rx.recv().await {
            if write_frame_async(&mut writer, &request).await.is_err() {
                return true;
            }
        }
        // Every AgentControl is gone: the session ended.
        false
    };
    let read = async {
        loop {
            match read_frame_async::<AgentMessage, _>(&mut reader).await {
                Ok(AgentMessage::Response { id, body }) => {
                    let slot = lock_pending(pending).as_mut().and_then(|m| m.remove(&id));
                    if let Some(tx) = slot {
                        let _ = tx.send(body);
                    }
                }
                Ok(AgentMessage::Event(event)) => {
                    if event_tx.send(event).await.is_err() {
                        return false;
                    }
                    // Invariant: counted after the hand-over and before the next frame is read,
                    // so a ping's answer read later finds every earlier event counted.
                    events_forwarded.fetch_add(1, std::sync::atomic::Ordering::Release);
                }
                Err(e) => {
                    tracing::debug!("agent control connection closed: {e}");
                    return true;
                }
            }
        }
    };
    tokio::select! {
        alive = write => alive,
        alive = read => alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A hostile agent on a fresh socket: it takes connections and does what `behave` says.
    async fn hostile_agent<F, Fut>(name: &str, behave: F) -> (AgentConnector, PathBuf)
    where
        F: Fn(UnixStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let dir = std::env::temp_dir().join(format!("mrd-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(behave(stream));
            }
        });
        let connector = AgentConnector::Unix {
            path,
            token: "0123456789abcdef".into(),
        };
        (connector, dir)
    }

    #[tokio::test]
    async fn a_request_to_an_agent_that_never_answers_fails_and_leaves_no_slot() {
        let (connector, dir) = hostile_agent("silent", |mut s| async move {
            let _: AgentHello = read_frame_async(&mut s).await.unwrap();
            let welcome = AgentWelcome::Welcome {
                version: PROTOCOL_VERSION,
                agent_pid: 1,
            };
            write_frame_async(&mut s, &welcome).await.unwrap();
            // Reads every request, answers none.
            while read_frame_async::<ControlRequest, _>(&mut s).await.is_ok() {}
        })
        .await;
        let (control, _events) =
            AgentControl::open_with_timeout(&connector, Duration::from_millis(300))
                .await
                .unwrap();
        let answer =
            tokio::time::timeout(Duration::from_secs(10), control.request(AgentRequest::Ping))
                .await
                .expect("the request must end on its own");
        let e = answer.expect_err("nobody answered");
        assert!(format!("{e}").contains("did not answer"), "{e}");
        assert_eq!(
            lock_pending(&control.pending).as_ref().map(|m| m.len()),
            Some(0)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Reads a hello, records its channel and welcomes it; whether it was the first connection.
    async fn welcome_and_record(s: &mut UnixStream, seen: &Mutex<Vec<AgentChannel>>) -> bool {
        let hello: AgentHello = read_frame_async(s).await.unwrap();
        let first = {
            let mut seen = seen.lock().unwrap();
            seen.push(hello.channel);
            seen.len() == 1
        };
        let welcome = AgentWelcome::Welcome {
            version: PROTOCOL_VERSION,
            agent_pid: 1,
        };
        write_frame_async(s, &welcome).await.unwrap();
        first
    }

    /// An agent that answers pings; the first control connection it cuts after its first
    /// answer (a dropped port-forward), the later ones must be resumes.
    async fn flaky_agent(name: &str) -> (AgentConnector, PathBuf, Arc<Mutex<Vec<AgentChannel>>>) {
        let channels = Arc::new(Mutex::new(Vec::new()));
        let seen = channels.clone();
        let (connector, dir) = hostile_agent(name, move |mut s| {
            let seen = seen.clone();
            async move {
                let first = welcome_and_record(&mut s, &seen).await;
                while let Ok(r) = read_frame_async::<ControlRequest, _>(&mut s).await {
                    let answer = AgentMessage::Response {
                        id: r.id,
                        body: AgentResponse::Pong,
                    };
                    if write_frame_async(&mut s, &answer).await.is_err() || first {
                        return;
                    }
                }
            }
        })
        .await;
        (connector, dir, channels)
    }

    #[tokio::test]
    async fn a_dropped_control_connection_is_resumed_and_requests_work_again() {
        let (connector, dir, channels) = flaky_agent("flaky").await;
        let policy = Reconnect {
            give_up_after: Duration::from_secs(10),
        };
        let (control, _events) =
            AgentControl::open_with(&connector, Duration::from_secs(5), Some(policy))
                .await
                .unwrap();
        let mut link = control.link();
        // The first answer comes, then the agent cuts the connection.
        assert!(matches!(
            control.request(AgentRequest::Ping).await,
            Ok(AgentResponse::Pong)
        ));
        link.wait_for(|l| *l == Link::Reconnecting)
            .await
            .expect("the drop is noticed");
        link.wait_for(|l| *l == Link::Up).await.expect("resumed");
        assert!(matches!(
            control.request(AgentRequest::Ping).await,
            Ok(AgentResponse::Pong)
        ));
        assert_eq!(
            *channels.lock().unwrap(),
            vec![AgentChannel::Control, AgentChannel::ResumeControl]
        );
        assert!(!control.is_closed());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_silent_connection_is_found_by_the_keep_alive_and_resumed() {
        let channels = Arc::new(Mutex::new(Vec::new()));
        let seen = channels.clone();
        let (connector, dir) = hostile_agent("silent-link", move |mut s| {
            let seen = seen.clone();
            async move {
                let first = welcome_and_record(&mut s, &seen).await;
                while let Ok(r) = read_frame_async::<ControlRequest, _>(&mut s).await {
                    // The first connection goes silent (still open, never answering), as a
                    // port-forward whose TCP died without a FIN does.
                    if !first {
                        let answer = AgentMessage::Response {
                            id: r.id,
                            body: AgentResponse::Pong,
                        };
                        let _ = write_frame_async(&mut s, &answer).await;
                    }
                }
            }
        })
        .await;
        let policy = Reconnect {
            give_up_after: Duration::from_secs(10),
        };
        let (control, _events) =
            AgentControl::open_with(&connector, Duration::from_millis(300), Some(policy))
                .await
                .unwrap();
        control.keep_alive(Duration::from_millis(200));
        let mut link = control.link();
        tokio::time::timeout(Duration::from_secs(10), async {
            link.wait_for(|l| *l == Link::Reconnecting).await.unwrap();
            link.wait_for(|l| *l == Link::Up).await.unwrap();
        })
        .await
        .expect("the keep-alive noticed the silent connection and the channel resumed");
        assert!(matches!(
            control.request(AgentRequest::Ping).await,
            Ok(AgentResponse::Pong)
        ));
        assert_eq!(
            channels.lock().unwrap()[..2],
            [AgentChannel::Control, AgentChannel::ResumeControl]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_agent_that_stays_unreachable_is_given_up_and_requests_fail_at_once() {
        let (connector, dir, _) = flaky_agent("gone").await;
        let policy = Reconnect {
            give_up_after: Duration::from_millis(800),
        };
        let (control, _events) =
            AgentControl::open_with(&connector, Duration::from_secs(5), Some(policy))
                .await
                .unwrap();
        // The agent's socket goes away: every reconnect attempt fails.
        let AgentConnector::Unix { path, .. } = &connector else {
            unreachable!()
        };
        std::fs::remove_file(path).unwrap();
        let _ = control.request(AgentRequest::Ping).await;
        let mut link = control.link();
        link.wait_for(|l| *l == Link::Reconnecting).await.unwrap();
        // While reconnecting, a request fails without waiting for its timeout.
        let started = std::time::Instant::now();
        let e = control.request(AgentRequest::Ping).await.unwrap_err();
        assert!(format!("{e}").contains("reconnecting"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(10), control.closed())
            .await
            .expect("given up within its bound");
        assert!(control.is_closed());
        assert!(control.request(AgentRequest::Ping).await.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_agent_that_never_answers_the_hello_fails_the_open() {
        let (connector, dir) = hostile_agent("mute", |s| async move {
            // Holds the connection open and says nothing.
            let _keep = s;
            std::future::pending::<()>().await
        })
        .await;
        let opened = tokio::time::timeout(
            HELLO_TIMEOUT + Duration::from_secs(5),
            connector.open(AgentChannel::Control),
        )
        .await
        .expect("the open must end on its own");
        let Err(e) = opened else {
            panic!("no welcome came, yet the open succeeded")
        };
        assert!(format!("{e}").contains("hello"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
