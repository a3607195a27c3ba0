//! The layer proxy: what processes of a session connect to.
//!
//! - the control socket (unix, 0600): one channel per process for lookups, UDP relays and
//!   listens; requests carry ids and are handled concurrently (at most
//!   `MAX_CONTROL_IN_FLIGHT` per process), answers go back in completion order;
//! - data listeners (TCP on 127.0.0.1 and ::1): one connection per outgoing TCP flow, which after
//!   its hello is spliced to a TCP channel of the agent.

use crate::agent::{AgentConnector, AgentControl};
use crate::incoming::IncomingRouter;
use crate::traffic::TrafficLog;
use anyhow::{Context, Result};
use mirrord_protocol::agent::{AgentChannel, AgentRequest, AgentResponse, Datagram};
use mirrord_protocol::api::{now_ms, ProcessInfo, TrafficEvent};
use mirrord_protocol::codec::{read_frame_async, write_frame_async};
use mirrord_protocol::layer::{
    DataReply, LayerControlRequest, LayerControlResponse, LayerHello, LayerRequest, ServerHello,
    ServerResponse, MAX_CONTROL_IN_FLIGHT,
};
use mirrord_protocol::net::{ConnectReply, ResolveError, UdpOpenReply};
use mirrord_protocol::{version_compatible, PROTOCOL_VERSION};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// A peer has this long to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Relay buffer per direction of a TCP flow.
const RELAY_BUFFER: usize = 256 * 1024;
/// Longest the session waits for the agent to open a flow (it gives up on a connect after
/// 20 s itself); kept below the layer's 30 s wait for the answer.
const AGENT_REPLY_TIMEOUT: Duration = Duration::from_secs(25);
/// How long the requests of a process that left may take to finish before they are aborted.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A UDP relay with no datagram either way for this long is closed.
const UDP_IDLE: Duration = Duration::from_secs(120);

/// What the proxy's handlers share.
pub struct ProxyShared {
    pub token: String,
    pub connector: AgentConnector,
    pub control: AgentControl,
    pub incoming: Arc<IncomingRouter>,
    /// Ids for layer control connections (one per process).
    pub next_process: std::sync::atomic::AtomicU64,
    pub traffic: Arc<TrafficLog>,
    /// Processes in the session, by control connection.
    pub processes: std::sync::Mutex<HashMap<u64, ProcessInfo>>,
    /// The name each cluster address was last resolved from, for the seccomp supervisor's
    /// name rules (the layer keeps its own per process).
    pub names: std::sync::Mutex<HashMap<std::net::IpAddr, String>>,
}

/// Names remembered for the supervisor; the map starts over when full (as the layer's).
const MAX_NAMES: usize = 4096;

impl ProxyShared {
    /// The name `ip` was resolved from through this session, if any.
    pub fn hostname_of(&self, ip: std::net::IpAddr) -> Option<String> {
        let ip = mirrord_protocol::config::canonical_ip(ip);
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .cloned()
    }

    fn remember_names(&self, name: &str, addrs: &[std::net::IpAddr]) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.len() + addrs.len() > MAX_NAMES {
            names.clear();
        }
        for a in addrs {
            names.insert(mirrord_protocol::config::canonical_ip(*a), name.to_owned());
        }
    }

    /// How many processes have joined so far (the next process id). It only grows, so two
    /// readings that differ mean a process joined in between, even one that already left.
    pub fn joined(&self) -> u64 {
        self.next_process.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn processes(&self) -> Vec<ProcessInfo> {
        let mut v: Vec<ProcessInfo> = self
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|p| p.pid);
        v
    }
}

pub struct LayerProxy {
    pub control_path: PathBuf,
    pub data_addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for LayerProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.control_path);
    }
}

impl LayerProxy {
    /// `agent_data`: the agent's own data listeners, if it has them (local targets); programs
    /// then send their flows there directly and the session binds none of its own.
    pub async fn start(
        control_path: PathBuf,
        shared: Arc<ProxyShared>,
        agent_data: Vec<SocketAddr>,
    ) -> Result<LayerProxy> {
        let _ = std::fs::remove_file(&control_path);
        let control = UnixListener::bind(&control_path)
            .with_context(|| format!("binding {}", control_path.display()))?;
        // The runtime dir is 0700 already; the socket itself is 0600 as well.
        std::fs::set_permissions(&control_path, std::fs::Permissions::from_mode(0o600))?;

        let mut tasks = Vec::new();
        let mut data_addrs = agent_data;
        if !data_addrs.is_empty() {
            let welcome_addrs = data_addrs.clone();
            tasks.push(tokio::spawn(accept_control(control, shared, welcome_addrs)));
            return Ok(LayerProxy {
                control_path,
                data_addrs,
                tasks,
            });
        }
        let v4 = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the loopback data listener")?;
        data_addrs.push(v4.local_addr()?);
        tasks.push(tokio::spawn(accept_data(v4, shared.clone())));
        // IPv6 loopback may be absent (disabled IPv6); IPv6 sockets then use v4-mapped addresses.
        if let Ok(v6) = TcpListener::bind(("::1", 0)).await {
            data_addrs.push(v6.local_addr()?);
            tasks.push(tokio::spawn(accept_data(v6, shared.clone())));
        }
        let welcome_addrs = data_addrs.clone();
        tasks.push(tokio::spawn(accept_control(control, shared, welcome_addrs)));
        Ok(LayerProxy {
            control_path,
            data_addrs,
            tasks,
        })
    }
}

async fn accept_control(
    listener: UnixListener,
    shared: Arc<ProxyShared>,
    data_addrs: Vec<SocketAddr>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let data_addrs = data_addrs.clone();
                tokio::spawn(async move {
                    if let Err(e) = control_channel(stream, shared, data_addrs).await {
                        tracing::debug!("layer control channel ended: {e:#}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept on the control socket failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_data(listener: TcpListener, shared: Arc<ProxyShared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = data_connection(stream, shared).await {
                        tracing::debug!("data connection ended: {e:#}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept on a data listener failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn control_channel(
    mut stream: UnixStream,
    shared: Arc<ProxyShared>,
    data_addrs: Vec<SocketAddr>,
) -> Result<()> {
    let hello: LayerHello = tokio::time::timeout(HELLO_TIMEOUT, read_frame_async(&mut stream))
        .await
        .context("no hello in time")??;
    let (pid, executable) = match hello {
        LayerHello::Control {
            version,
            token,
            pid,
            executable,
        } => {
            if let Some(reason) = refusal(version, &token, &shared.token) {
                write_frame_async(&mut stream, &ServerHello::Refused { reason }).await?;
                return Ok(());
            }
            (pid, executable)
        }
        LayerHello::Tcp { .. } => {
            let reason = "a data hello on the control socket".to_owned();
            write_frame_async(&mut stream, &ServerHello::Refused { reason }).await?;
            return Ok(());
        }
    };
    tracing::info!(pid, %executable, "process joined the session");
    write_frame_async(
        &mut stream,
        &ServerHello::Welcome {
            version: PROTOCOL_VERSION,
            data_addrs,
        },
    )
    .await?;
    let owner = shared
        .next_process
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared
        .processes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            owner,
            ProcessInfo {
                pid,
                executable: executable.clone(),
            },
        );
    shared.traffic.emit(TrafficEvent::ProcessConnected {
        time: now_ms(),
        pid,
        executable: executable.clone(),
    });
    // This process's UDP relays, by relay address; dropped (and so stopped) with the channel.
    let relays: Arc<std::sync::Mutex<HashMap<SocketAddr, RelayTask>>> = Arc::default();
    let (mut requests, mut answers) = stream.into_split();
    // request handlers --answers--> the writer task --frames--> the layer. Bounded by the
    // permits below: never more answers than handlers.
    let (answer_tx, mut answer_rx) = mpsc::channel::<LayerControlResponse>(MAX_CONTROL_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(answer) = answer_rx.recv().await {
            if write_frame_async(&mut answers, &answer).await.is_err() {
                break;
            }
        }
    });
    // Invariant: at most MAX_CONTROL_IN_FLIGHT requests of one process are handled at once; at
    // the bound this channel is not read until one finishes (the layer bounds itself the same).
    let permits = Arc::new(Semaphore::new(MAX_CONTROL_IN_FLIGHT));
    let mut handlers = JoinSet::new();
    let result = loop {
        let LayerControlRequest { id, request } = match read_frame_async(&mut requests).await {
            Ok(r) => r,
            Err(e) if e.is_closed() => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break Ok(());
        };
        let (shared, relays, answer_tx) = (shared.clone(), relays.clone(), answer_tx.clone());
        handlers.spawn(async move {
            let response = handle_request(&shared, owner, &relays, request).await;
            let _ = answer_tx.send(LayerControlResponse { id, response }).await;
            drop(permit);
        });
        while handlers.try_join_next().is_some() {}
    };
    // Requests already taken finish (a listen half-done would leave the agent subscribed with
    // nobody to release it), bounded; whatever is left after that is aborted.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while handlers.join_next().await.is_some() {}
    })
    .await;
    handlers.shutdown().await;
    writer.abort();
    relays.lock().unwrap_or_else(|p| p.into_inner()).clear();
    tracing::info!(pid, %executable, "process left the session");
    shared
        .processes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&owner);
    shared.traffic.emit(TrafficEvent::ProcessDisconnected {
        time: now_ms(),
        pid,
        executable,
    });
    shared.incoming.owner_gone(&shared.control, owner).await;
    result
}

/// Answers one request of a process's control channel.
async fn handle_request(
    shared: &ProxyShared,
    owner: u64,
    relays: &std::sync::Mutex<HashMap<SocketAddr, RelayTask>>,
    request: LayerRequest,
) -> ServerResponse {
    match request {
        LayerRequest::Resolve { name, family } => {
            let started = std::time::Instant::now();
            let result = match shared
                .control
                .request(AgentRequest::Resolve {
                    name: name.clone(),
                    family,
                })
                .await
            {
                Ok(AgentResponse::Resolved(r)) => r,
                Ok(other) => Err(ResolveError::Failed(format!(
                    "unexpected agent answer {other:?}"
                ))),
                Err(e) => Err(ResolveError::Temporary(e.to_string())),
            };
            if let Ok(r) = &result {
                shared.remember_names(&name, &r.addresses);
            }
            shared.traffic.emit(TrafficEvent::DnsQuery {
                time: now_ms(),
                name,
                answers: result
                    .as_ref()
                    .map(|r| r.addresses.iter().map(|a| a.to_string()).collect())
                    .unwrap_or_default(),
                duration_ms: started.elapsed().as_millis() as u64,
                error: result.as_ref().err().map(|e| e.to_string()),
            });
            ServerResponse::Resolved(result)
        }
        LayerRequest::ReverseResolve { ip } => {
            let started = std::time::Instant::now();
            let result = match shared
                .control
                .request(AgentRequest::ReverseResolve { ip })
                .await
            {
                Ok(AgentResponse::ReverseResolved(r)) => r,
                Ok(other) => Err(ResolveError::Failed(format!(
                    "unexpected agent answer {other:?}"
                ))),
                Err(e) => Err(ResolveError::Temporary(e.to_string())),
            };
            shared.traffic.emit(TrafficEvent::DnsQuery {
                time: now_ms(),
                name: ip.to_string(),
                answers: result.iter().cloned().collect(),
                duration_ms: started.elapsed().as_millis() as u64,
                error: result.as_ref().err().map(|e| e.to_string()),
            });
            ServerResponse::ReverseResolved(result)
        }
        LayerRequest::UdpOpen { remote, dns } => match open_udp_relay(shared, remote, dns).await {
            Ok((relay_addr, reply, task)) => {
                shared.traffic.emit(TrafficEvent::OutgoingConnection {
                    time: now_ms(),
                    host: None,
                    address: remote.ip().to_string(),
                    port: remote.port(),
                    protocol: if dns { "udp (dns)" } else { "udp" }.into(),
                    error: match reply {
                        UdpOpenReply::Failed { errno } => {
                            Some(std::io::Error::from_raw_os_error(errno).to_string())
                        }
                        UdpOpenReply::Opened { .. } => None,
                    },
                });
                if let Some(task) = task {
                    relays
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(relay_addr, task);
                }
                ServerResponse::UdpOpened {
                    relay: Some(relay_addr),
                    reply,
                }
            }
            Err(e) => {
                tracing::warn!(%remote, "UDP relay failed: {e:#}");
                ServerResponse::UdpOpened {
                    relay: None,
                    reply: UdpOpenReply::Failed {
                        errno: libc::ENETUNREACH,
                    },
                }
            }
        },
        LayerRequest::UdpClose { relay } => {
            relays
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&relay);
            ServerResponse::Done
        }
        LayerRequest::Listen { port, local } => {
            match shared
                .incoming
                .listen(&shared.control, owner, port, local)
                .await
            {
                Ok(()) => ServerResponse::Done,
                Err(e) => ServerResponse::Error(e),
            }
        }
        LayerRequest::Unlisten { port } => {
            shared.incoming.unlisten(&shared.control, owner, port).await;
            ServerResponse::Done
        }
        LayerRequest::IncomingPeer { listener, source } => ServerResponse::IncomingPeer(
            shared
                .incoming
                .peer_of(&shared.control, listener, source)
                .await,
        ),
    }
}

fn refusal(version: u32, token: &str, expected: &str) -> Option<String> {
    if !version_compatible(version) {
        Some(format!(
            "protocol version {version} is not supported (server speaks {PROTOCOL_VERSION})"
        ))
    } else if !mirrord_protocol::token_eq(token, expected) {
        Some("invalid session token".into())
    } else {
        None
    }
}

async fn data_connection(mut stream: TcpStream, shared: Arc<ProxyShared>) -> Result<()> {
    let hello: LayerHello = tokio::time::timeout(HELLO_TIMEOUT, read_frame_async(&mut stream))
        .await
        .context("no hello in time")??;
    let LayerHello::Tcp {
        version,
        token,
        remote,
        hostname,
        pid,
    } = hello
    else {
        let reason = "a control hello on a data listener".to_owned();
        write_frame_async(&mut stream, &DataReply::Refused { reason }).await?;
        return Ok(());
    };
    if let Some(reason) = refusal(version, &token, &shared.token) {
        write_frame_async(&mut stream, &DataReply::Refused { reason }).await?;
        return Ok(());
    }
    let _ = stream.set_nodelay(true);
    // Bounded: the agent answers within its own connect timeout; past this the program gets
    // ETIMEDOUT well before the layer's own wait (30 s) ends.
    let opened = tokio::time::timeout(AGENT_REPLY_TIMEOUT, async {
        let mut agent = shared.connector.open(AgentChannel::Tcp { remote }).await?;
        let reply = read_frame_async::<ConnectReply, _>(&mut agent).await?;
        anyhow::Ok((agent, reply))
    })
    .await;
    let (agent, reply) = match opened {
        Ok(Ok((agent, reply))) => (Some(agent), reply),
        Ok(Err(e)) => {
            tracing::warn!(%remote, "the agent could not make a connection: {e:#}");
            (
                None,
                ConnectReply::Failed {
                    errno: libc::ENETUNREACH,
                },
            )
        }
        Err(_) => {
            tracing::warn!(%remote, "the agent did not answer a connect in time");
            (
                None,
                ConnectReply::Failed {
                    errno: libc::ETIMEDOUT,
                },
            )
        }
    };
    tracing::debug!(pid, %remote, ?hostname, ?reply, "outgoing connection");
    shared.traffic.emit(TrafficEvent::OutgoingConnection {
        time: now_ms(),
        host: hostname,
        address: remote.ip().to_string(),
        port: remote.port(),
        protocol: "tcp".into(),
        error: match reply {
            ConnectReply::Failed { errno } => {
                Some(std::io::Error::from_raw_os_error(errno).to_string())
            }
            ConnectReply::Connected { .. } => None,
        },
    });
    write_frame_async(&mut stream, &DataReply::Connect(reply)).await?;
    if let (ConnectReply::Connected { .. }, Some(agent)) = (reply, agent) {
        // Both directions until both end, each half-close passed on; a download continues on
        // the relay's bulk threads so it never holds up other flows' requests.
        let stream = mirrord_relay::Following::new(stream);
        if let (Err(_), Some((stream, _agent))) =
            mirrord_relay::relay_and_return(stream, agent, RELAY_BUFFER).await
        {
            // The flow broke rather than ended (its port-forward was cut, the agent went): the
            // program gets a reset, not an end of stream it could take for a complete answer.
            let _ = stream.get_ref().set_zero_linger();
        }
    }
    Ok(())
}

/// A running UDP relay; dropping it stops the relay.
struct RelayTask(JoinHandle<()>);

impl Drop for RelayTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds a loopback UDP socket and connects it, through the agent, to `remote` in the pod.
async fn open_udp_relay(
    shared: &ProxyShared,
    remote: SocketAddr,
    dns: bool,
) -> Result<(SocketAddr, UdpOpenReply, Option<RelayTask>)> {
    let socket = UdpSocket::bind(("127.0.0.1", 0)).await?;
    let relay_addr = socket.local_addr()?;
    let (agent, reply) = tokio::time::timeout(AGENT_REPLY_TIMEOUT, async {
        let mut agent = shared
            .connector
            .open(AgentChannel::Udp { remote, dns })
            .await?;
        let reply: UdpOpenReply = read_frame_async(&mut agent).await?;
        anyhow::Ok((agent, reply))
    })
    .await
    .context("the agent did not open a UDP flow in time")??;
    if let UdpOpenReply::Failed { .. } = reply {
        return Ok((relay_addr, reply, None));
    }
    let task = tokio::spawn(async move {
        let (mut agent_rx, mut agent_tx) = tokio::io::split(agent);
        let mut buf = vec![0u8; 65536];
        // The program's socket, learnt from its first datagram; others are ignored so no other
        // local process can inject into the flow.
        let mut program: Option<SocketAddr> = None;
        loop {
            tokio::select! {
                r = tokio::time::timeout(UDP_IDLE, socket.recv_from(&mut buf)) => {
                    let Ok(Ok((n, from))) = r else { break };
                    if *program.get_or_insert(from) != from {
                        continue;
                    }
                    if write_frame_async(&mut agent_tx, &Datagram(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
                r = read_frame_async::<Datagram, _>(&mut agent_rx) => {
                    let Ok(Datagram(payload)) = r else { break };
                    if let Some(to) = program {
                        let _ = socket.send_to(&payload, to).await;
                    }
                }
            }
        }
    });
    Ok((relay_addr, reply, Some(RelayTask(task))))
}
