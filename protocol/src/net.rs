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

/// The source address a local agent connects from when it delivers an incoming connection to
/// a program's IPv4 loopback listener itself: `127.128.0.0/9` carries an index the agent gave
/// the (client IP, pod IP) pair, and the port is the client's own port. The layer learns what
/// an index means from its first `IncomingPeer` answer and then knows every later connection
/// of that client without asking. An index never changes meaning during an agent's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliverySource {
    /// 1 ..= [`DeliverySource::MAX_INDEX`].
    pub index: u32,
    /// The client's port.
    pub port: u16,
}

impl DeliverySource {
    /// Indexes fit in the 23 bits the address has left.
    pub const MAX_INDEX: u32 = (1 << 23) - 1;

    pub fn address(self) -> std::net::SocketAddrV4 {
        let [_, b, c, d] = self.index.to_be_bytes();
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(127, 128 | b, c, d), self.port)
    }

    /// The index and port of a source address in the range, else `None`.
    pub fn of(source: SocketAddr) -> Option<DeliverySource> {
        let SocketAddr::V4(v4) = source else {
            return None;
        };
        let [a, b, c, d] = v4.ip().octets();
        if a != 127 || b & 128 == 0 {
            return None;
        }
        let index = u32::from_be_bytes([0, b & 127, c, d]);
        (index != 0).then_some(DeliverySource {
            index,
            port: v4.port(),
        })
    }
}

#[cfg(test)]
mod delivery_source_tests {
    use super::*;

    #[test]
    fn a_delivery_source_round_trips_and_ordinary_loopback_is_not_one() {
        for index in [1, 2, 255, 256, 65_536, DeliverySource::MAX_INDEX] {
            let s = DeliverySource {
                index,
                port: 40_000,
            };
            assert_eq!(DeliverySource::of(SocketAddr::V4(s.address())), Some(s));
        }
        for plain in [
            "127.0.0.1:5000",
            "127.127.0.1:5000",
            "127.128.0.0:5000",
            "[::1]:5000",
        ] {
            assert_eq!(DeliverySource::of(plain.parse().unwrap()), None, "{plain}");
        }
    }
}
