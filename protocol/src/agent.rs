//! Messages between the server and the agent.
//!
//! Every connection to the agent opens with [`AgentHello`] → [`AgentWelcome`]. What follows
//! depends on the channel:
//! - [`AgentChannel::Control`]: [`ControlRequest`]s with ids, answered by [`AgentMessage`]s (which
//!   may also carry events the agent pushes);
//! - [`AgentChannel::Tcp`]: one [`crate::net::ConnectReply`], then raw bytes;
//! - [`AgentChannel::Udp`]: one [`crate::net::UdpOpenReply`], then every datagram as one frame holding a
//!   [`Datagram`] in each direction.

use crate::net::{Family, ResolveResult};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    pub version: u32,
    pub token: String,
    pub channel: AgentChannel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentChannel {
    Control,
    Tcp {
        remote: SocketAddr,
    },
    Udp {
        remote: SocketAddr,
        dns: bool,
    },
    /// The stream for an incoming connection the agent announced with
    /// [`AgentEvent::Incoming`]: raw bytes from then on.
    Incoming {
        id: u64,
    },
    /// A control channel that resumes the session after its connection dropped (a reconnect
    /// through a fresh port-forward). The agent serves one session, bound to its token, so the
    /// token is the session's identity: the agent first ends the session's earlier control
    /// channels (one may linger half-open) and releases what they held, so the session can
    /// subscribe again; from then on it is a [`AgentChannel::Control`].
    ResumeControl,
    /// A connection opened ahead of need (through a port-forward a new connection costs a TLS
    /// handshake, an HTTP upgrade and the API server's own connect). After its welcome it
    /// waits, with no deadline, for a second hello that names what it is for; from then on it
    /// is that channel. A second `Spare` is refused.
    Spare,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentWelcome {
    Welcome { version: u32, agent_pid: u32 },
    Refused { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    pub id: u64,
    pub body: AgentRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentRequest {
    Resolve {
        name: String,
        family: Family,
    },
    /// The name of an address (PTR), as the target's resolver gives it.
    ReverseResolve {
        ip: std::net::IpAddr,
    },
    /// Start receiving the target's traffic to `port`.
    Subscribe {
        port: u16,
        mode: TrafficMode,
        /// For steal: which HTTP requests to take (`None`: all of them).
        filter: Option<HttpFilter>,
        /// The target terminates TLS on this port: where its certificate chain and key are.
        tls: Option<TlsPort>,
        /// For mirror and observe: copy the port's traffic by capturing its packets in the
        /// target's namespace instead of redirecting the port through the agent
        /// (`feature.network.incoming.mirror_capture`). Ignored for steal and TLS ports.
        capture: bool,
    },
    Unsubscribe {
        port: u16,
    },
    /// Where the agent may deliver this session's connections for a subscribed `port` itself:
    /// the program's listener on the developer machine's loopback, which a local agent (one
    /// that printed data listeners) can reach from a socket made in the namespace it started
    /// in. The agent then connects there and says so with [`AgentEvent::Delivered`] instead of
    /// announcing the connection. `None` goes back to announcing. For steal and mirror
    /// (copies); an agent that cannot reach the developer machine ignores it. Answered with
    /// [`AgentResponse::Subscribed`].
    DeliverTo {
        port: u16,
        to: Option<SocketAddr>,
    },
    Ping,
    /// The session ends: the agent removes its rules and exits now rather than after its
    /// communication timeout (an ephemeral container cannot be deleted from outside).
    Shutdown,
    /// The target process's environment (`/proc/PID/environ`), for `feature.env`.
    Env,
    /// The target's `/etc/resolv.conf` and `/etc/hosts`, which the session serves to programs
    /// that open those files themselves (syscall interception).
    ResolverFiles,
}

/// How a subscribed port's traffic reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficMode {
    /// A copy; the target keeps serving.
    Mirror,
    /// Instead of the target.
    Steal,
    /// A copy of both directions (for `mirrord dump`): the channel carries [`Observed`] frames;
    /// the target keeps serving.
    Observe,
}

/// Where the target keeps the certificate chain and key it serves on a TLS port: paths in the
/// target's own filesystem, which the agent reads through `/proc/PID/root`. Only the paths
/// cross the boundary; the key itself never leaves the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsPort {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A piece of an observed connection. An empty `data` means that direction has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// From the client to the target (a request), or back (a response).
    pub from_client: bool,
    pub data: Vec<u8>,
}

/// Which HTTP requests a filtered steal takes. Regexes are matched with the `regex` crate;
/// a header filter is matched against each `name: value` line of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpFilter {
    Header(String),
    Path(String),
    Method(String),
    AllOf(Vec<HttpFilter>),
    AnyOf(Vec<HttpFilter>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMessage {
    Response { id: u64, body: AgentResponse },
    Event(AgentEvent),
}

/// What the agent tells a client without being asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentEvent {
    /// A program connected through the agent's own data listener (the direct path of local
    /// targets), for the traffic view.
    OutgoingConnection {
        pid: u32,
        remote: SocketAddr,
        hostname: Option<String>,
        /// errno of a failed connect.
        error: Option<i32>,
    },
    /// A connection (or, for HTTP steal, a stream of requests) for the client on `port`: open an
    /// [`AgentChannel::Incoming`] with this `id` to receive it.
    Incoming {
        id: u64,
        port: u16,
        mode: TrafficMode,
        /// The client in the cluster.
        peer: SocketAddr,
        /// The address the client connected to (the pod's address and `port`).
        local: SocketAddr,
    },
    /// The agent connected a connection for `port` to the program's listener itself (see
    /// [`AgentRequest::DeliverTo`]), from `source` on the developer machine's loopback. Sent
    /// before the connect, so a session that reads its events in order knows the real client
    /// before the program can accept. (No event says when it ends: the session forgets the
    /// source once the program accepted it, and keeps a bounded number of the others.)
    Delivered {
        port: u16,
        /// Steal, or mirror (a copy).
        mode: TrafficMode,
        /// The client in the cluster.
        peer: SocketAddr,
        /// The address the client connected to (the pod's address and `port`).
        local: SocketAddr,
        /// The agent's end of the connection to the program.
        source: SocketAddr,
    },
    /// An HTTP request the agent gave this client (steal, or a copy it delivered itself), for
    /// the traffic view; sent when the response head came back.
    HttpRequest {
        port: u16,
        mode: TrafficMode,
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        /// Response status; 0 when the request failed.
        status: u16,
        duration_ms: u64,
        /// The filter that took it, as configured (`None` for an unfiltered steal).
        filter: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentResponse {
    Resolved(ResolveResult),
    ReverseResolved(Result<String, crate::net::ResolveError>),
    Subscribed,
    Unsubscribed,
    Pong,
    /// Answer to `Shutdown`: the agent is on its way out.
    ShuttingDown,
    Error(String),
    /// The target process's environment variables, in its order (entries that are not UTF-8
    /// are left out). Empty for a target without a process (targetless, `netns/NAME`).
    Env(Vec<(String, String)>),
    /// The target's resolver files as the agent read them at start-up.
    ResolverFiles {
        resolv_conf: String,
        hosts: String,
    },
}

/// One UDP datagram on a UDP channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datagram(pub Vec<u8>);
