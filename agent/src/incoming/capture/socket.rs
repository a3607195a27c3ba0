//! The capture socket: `AF_PACKET`/`SOCK_DGRAM` on every interface of the agent's network
//! namespace (the target's), non-blocking under tokio's `AsyncFd`, with the BPF program of
//! `bpf` attached; and the decoding of what it reads into TCP segments (etherparse).

use super::reassembly::Segment;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Receive buffer asked of the kernel (as root, above `rmem_max`): bursts of the target's
/// traffic wait here while the agent is busy; what does not fit is dropped by the kernel and
/// counted (`tp_drops`).
const RECV_BUFFER: usize = 32 << 20;

pub struct PacketSocket {
    socket: Arc<Socket>,
}

/// Packets the kernel counted for the socket since the last read of the counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelStats {
    pub packets: u64,
    pub drops: u64,
}

impl PacketSocket {
    /// Opens the socket in the current network namespace with `filter` attached before it is
    /// bound, so no unfiltered packet is ever queued to it.
    pub fn open(filter: &[socket2::SockFilter]) -> io::Result<PacketSocket> {
        // Protocol 0 at creation: the socket receives nothing until bound below.
        let socket = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0)))?;
        socket.attach_filter(filter)?;
        set_force_rcvbuf(&socket, RECV_BUFFER)
            .or_else(|_| socket.set_recv_buffer_size(RECV_BUFFER))?;
        socket.set_nonblocking(true)?;
        socket.bind(&all_interfaces())?;
        Ok(PacketSocket {
            socket: Arc::new(socket),
        })
    }

    /// Registers the socket with the current tokio runtime (the one that reads it).
    pub fn register(&self) -> io::Result<AsyncFd<Arc<Socket>>> {
        // SAFETY: the descriptor is owned by the `Socket` in the Arc; this PacketSocket keeps
        // an Arc (so the descriptor stays open and the same) for as long as the AsyncFd, which
        // the read loop drops before it gives the PacketSocket up.
        Ok(unsafe { AsyncFd::register_with_interest(self.socket.clone(), Interest::READABLE)? })
    }

    /// Replaces the filter (atomically, for packets not queued yet).
    pub fn set_filter(&self, filter: &[socket2::SockFilter]) -> io::Result<()> {
        self.socket.attach_filter(filter)
    }

    /// One packet into `buf`: its length, or `WouldBlock`. A packet longer than `buf` is
    /// reported with its full length (`MSG_TRUNC`), so the caller sees it was cut.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes for the whole call; the
        // kernel writes at most that many.
        let n = unsafe {
            libc::recv(
                self.socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The kernel's counters (reading them resets them).
    pub fn stats(&self) -> io::Result<KernelStats> {
        let mut stats = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `stats` and `len` are live locals; `len` is the size of `stats`.
        let r = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelStats {
            packets: u64::from(stats.tp_packets),
            drops: u64::from(stats.tp_drops),
        })
    }
}

/// `SO_RCVBUFFORCE`: a receive buffer above `net.core.rmem_max` (needs CAP_NET_ADMIN).
fn set_force_rcvbuf(socket: &Socket, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` is a live c_int and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `sockaddr_ll` for every interface (index 0) and every protocol (`ETH_P_ALL`).
fn all_interfaces() -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is one of this platform's sockaddr types and fits the storage
    // (`view_as` asserts it); the zeroed storage is a valid sockaddr_ll.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    ll.sll_ifindex = 0;
    // SAFETY: the storage holds a sockaddr_ll, and the length given is sockaddr_ll's.
    unsafe {
        SockAddr::new(
            storage,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    }
}

/// The index of the loopback interface in the current namespace.
pub fn loopback_index() -> io::Result<u32> {
    nix::net::if_::if_nametoindex("lo").map_err(io::Error::from)
}

/// Decodes an IP packet (from its IP header on) into a TCP segment; anything else (other
/// protocols, fragments, malformed headers) is `None`.
pub fn decode(packet: &[u8]) -> Option<Segment<'_>> {
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match sliced.net? {
        NetSlice::Ipv4(v4) => {
            if v4.payload().fragmented {
                return None;
            }
            (
                v4.header().source_addr().into(),
                v4.header().destination_addr().into(),
            )
        }
        NetSlice::Ipv6(v6) => {
            if v6.payload().fragmented {
                return None;
            }
            (
                v6.header().source_addr().into(),
                v6.header().destination_addr().into(),
            )
        }
        _ => return None,
    };
    let TransportSlice::Tcp(tcp) = sliced.transport? else {
        return None;
    };
    Some(Segment {
        src: SocketAddr::new(src, tcp.source_port()),
        dst: SocketAddr::new(dst, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        ack: tcp.ack(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload: tcp.payload(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    #[test]
    fn decodes_a_tcp_segment_of_either_ip_version() {
        let mut v4 = Vec::new();
        PacketBuilder::ipv4([10, 244, 0, 20], [10, 244, 0, 10], 64)
            .tcp(40000, 80, 1234, 64240)
            .syn()
            .write(&mut v4, b"hi")
            .unwrap();
        let seg = decode(&v4).unwrap();
        assert_eq!(seg.src, "10.244.0.20:40000".parse().unwrap());
        assert_eq!(seg.dst, "10.244.0.10:80".parse().unwrap());
        assert_eq!((seg.seq, seg.syn, seg.payload), (1234, true, &b"hi"[..]));

        let mut v6 = Vec::new();
        PacketBuilder::ipv6([0; 16], [1; 16], 64)
            .tcp(80, 40000, 9, 64240)
            .fin()
            .write(&mut v6, b"")
            .unwrap();
        let seg = decode(&v6).unwrap();
        assert!(seg.fin && !seg.syn);
        assert_eq!(seg.src.port(), 80);
    }

    #[test]
    fn other_protocols_are_not_segments() {
        let mut udp = Vec::new();
        PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
            .udp(53, 53)
            .write(&mut udp, b"x")
            .unwrap();
        assert!(decode(&udp).is_none());
    }

    proptest! {
        /// Whatever bytes the socket returns, decoding never panics.
        #[test]
        fn hostile_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&bytes);
        }

        /// A valid header followed by garbage: still no panic.
        #[test]
        fn truncated_and_garbled_tcp_never_panics(cut in 0usize..80, flip in any::<(usize, u8)>()) {
            let mut p = Vec::new();
            PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(1, 80, 7, 100)
                .write(&mut p, &[7u8; 40])
                .unwrap();
            let i = flip.0 % p.len();
            p[i] ^= flip.1;
            p.truncate(cut.min(p.len()));
            let _ = decode(&p);
        }
    }
}
