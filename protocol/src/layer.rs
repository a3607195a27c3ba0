//! Messages between the layer (inside the program) and the server's session proxy.
//!
//! Control channel (`MIRRORD_PROXY_ADDR`, a unix socket): [`LayerHello::Control`] →
//! [`ServerHello`], then requests [`LayerControlRequest`] answered by [`LayerControlResponse`] with the
//! same id. Requests of different threads are in flight together and answers come in any order
//! (a slow lookup never holds up another thread's). The channel stays open for the life of the
//! process, which is how the session knows which processes belong to it.
//!
//! Data connection (one per outgoing TCP flow, to an address from [`ServerHello::Welcome`]):
//! [`LayerHello::Tcp`] → [`ConnectReply`], then raw bytes in both directions.

use crate::net::{ConnectReply, Family, ResolveResult, UdpOpenReply};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerHello {
    Control {
        version: u32,
        token: String,
        pid: u32,
        /// The program's executable name, for the user to recognise it.
        executable: String,
    },
    Tcp {
        version: u32,
        token: String,
        pid: u32,
        /// The address the program asked for.
        remote: SocketAddr,
        /// The name the program resolved to get `remote`, if it came from a lookup.
        hostname: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerHello {
    Welcome {
        version: u32,
        /// Loopback listeners for data connections: one per address family available.
        data_addrs: Vec<SocketAddr>,
    },
    Refused {
        reason: String,
    },
}

/// Reply on a data connection: the connect result, or a refusal of the hello itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataReply {
    Connect(ConnectReply),
    Refused { reason: String },
}

/// Requests one process may have in flight on its control channel. The layer makes a thread
/// beyond it wait for a slot (within that request's reply timeout); the session reads no further
/// request of that process until one is answered.
pub const MAX_CONTROL_IN_FLIGHT: usize = 128;

/// A request on the control channel; its answer carries the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerControlRequest {
    pub id: u64,
    pub request: LayerRequest,
}

/// The answer to the [`LayerControlRequest`] with this `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerControlResponse {
    pub id: u64,
    pub response: ServerResponse,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerRequest {
    Resolve {
        name: String,
        family: Family,
    },
    /// The name of a cluster address (PTR lookup in the target).
    ReverseResolve {
        ip: std::net::IpAddr,
    },
    /// Open a UDP flow to `remote` through the pod. `dns` marks a datagram flow to port 53 that
    /// goes to the pod's own nameserver whatever the program addressed.
    UdpOpen {
        remote: SocketAddr,
        dns: bool,
    },
    /// The program closed the socket that used this relay.
    UdpClose {
        relay: SocketAddr,
    },
    /// The program listens on the pod's `port`; deliver its traffic to `local`, the loopback
    /// address where the layer really bound the program's socket.
    Listen {
        port: u16,
        local: SocketAddr,
    },
    /// The program closed that listener.
    Unlisten {
        port: u16,
    },
    /// Who is really behind a connection the session made to `listener` from `source`?
    IncomingPeer {
        listener: SocketAddr,
        source: SocketAddr,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerResponse {
    Resolved(ResolveResult),
    ReverseResolved(Result<String, crate::net::ResolveError>),
    /// The loopback address to send the flow's datagrams to, and the reply from the pod.
    UdpOpened {
        relay: Option<SocketAddr>,
        reply: UdpOpenReply,
    },
    Done,
    /// For [`LayerRequest::IncomingPeer`]: the client in the cluster and the pod address it
    /// connected to, if the connection came from the session.
    IncomingPeer(Option<(SocketAddr, SocketAddr)>),
    Error(String),
}
