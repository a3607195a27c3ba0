//! Network types shared by both links (layer ↔ server and server ↔ agent).

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// Which address families a name lookup wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    Any,
    V4,
    V6,
}

/// Why a lookup found nothing. The layer maps these onto `EAI_*` codes so a program sees the
/// failure it would see inside the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ResolveError {
    /// No search candidate exists (NXDOMAIN for each) (`EAI_NONAME`).
    #[error("name not found")]
    NotFound,
    /// A search candidate exists but has no address of the wanted family (`EAI_NODATA`), e.g.
    /// an IPv6 lookup of a name with only A records.
    #[error("no address of the wanted family")]
    NoData,
    /// The resolver could not get an answer (timeout, SERVFAIL, REFUSED) (`EAI_AGAIN`).
    #[error("temporary failure in name resolution: {0}")]
    Temporary(String),
    /// Anything else (`EAI_FAIL`).
    #[error("name resolution failed: {0}")]
    Failed(String),
}

/// A successful lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The fully qualified name that answered (after search-list expansion), for `ai_canonname`.
    pub canonical_name: String,
    pub addresses: Vec<IpAddr>,
}

pub type ResolveResult = Result<Resolved, ResolveError>;

/// Outcome of a connect made on the program's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectReply {
    /// `local` is the address of the socket on the far side (in the pod), `remote` the peer.
    Connected {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// The connect failed with this errno (e.g. `ECONNREFUSED`), to be given to the program.
    Failed { errno: i32 },
}

/// Outcome of opening a UDP flow in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UdpOpenReply {
    /// `local` is the socket's address in the pod; `remote` where its datagrams go (for DNS, the
    /// pod's nameserver, which may differ from what the program addressed).
    Opened {
        local: SocketAddr,
        remote: SocketAddr,
    },
    Failed {
        errno: i32,
    },
}
