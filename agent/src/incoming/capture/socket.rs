//! The capture socket: `AF_PACKET`/`SOCK_DGRAM` on every interface of the agent's network
//! namespace (the target's), with the BPF program of `bpf` attached and its packets delivered
//! into a `ring`, watched with tokio's `AsyncFd`; and the decoding of a packet into a TCP
//! segment (etherparse).

use super::reassembly::Segment;
use super::ring::Ring;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

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
    /// Opens the socket in the current network namespace, with its ring and `filter` set up
    /// before it is bound, so no unfiltered packet is ever delivered to it.
    pub fn open(filter: &[socket2::SockFilter]) -> io::Result<(PacketSocket, Ring)> {
        // Protocol 0 at creation: the socket receives nothing until bound below.
        let socket = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0)))?;
        let ring = Ring::setup(socket.as_raw_fd())?;
        socket.attach_filter(filter)?;
        socket.set_nonblocking(true)?;
        socket.bind(&all_interfaces())?;
        let socket = PacketSocket {
            socket: Arc::new(socket),
        };
        Ok((socket, ring))
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

    /// The kernel's counters (reading them resets them).
    pub fn stats(&self) -> io::Result<KernelStats> {
        let mut stats = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `stats` and `len` are live locals; `len` is the size of `stats`.
        let r = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats_v3).cast(),
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

    /// The ring end to end, on this machine's loopback (needs root: CAP_NET_RAW): 32 MiB sent
    /// through a 16 MiB ring arrive whole and in order, so blocks are read and handed back; a
    /// 256 KiB write is captured in GSO packets longer than a page, none truncated.
    #[test]
    fn the_ring_delivers_more_than_it_holds_in_order() {
        use std::io::{Read, Write};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: capturing needs root");
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let filter = super::super::bpf::program(
            &[port],
            loopback_index().unwrap(),
            crate::redirect::AGENT_MARK,
        )
        .unwrap();
        let (socket, mut ring) = PacketSocket::open(&filter).unwrap();
        const CHUNK: usize = 256 * 1024;
        const CHUNKS: usize = 128;
        // reader --bytes captured so far--> sender
        let (captured_tx, captured_rx) = std::sync::mpsc::channel::<usize>();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 1 << 16];
            while c.read(&mut buf).unwrap() > 0 {}
        });
        let sender = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut seen = 0;
            for i in 0..CHUNKS {
                c.write_all(&vec![i as u8; CHUNK]).unwrap();
                // Paced by the reader, so a slow (debug) reader loses nothing to the kernel.
                while seen < (i + 1) * CHUNK {
                    seen = captured_rx
                        .recv_timeout(std::time::Duration::from_secs(10))
                        .unwrap_or_else(|_| panic!("the ring stalled at chunk {i}"));
                }
            }
        });
        let mut next_seq: Option<u32> = None;
        let (mut got, mut largest, mut truncated) = (0usize, 0usize, 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while got < CHUNK * CHUNKS {
            assert!(
                std::time::Instant::now() < deadline,
                "captured {got} bytes only"
            );
            let mut pfd = libc::pollfd {
                fd: socket.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            while let Some(frame) = ring.next_frame() {
                // A ring that never hands its blocks back would be read round and round.
                assert!(
                    std::time::Instant::now() < deadline,
                    "captured {got} bytes only"
                );
                if frame.truncated {
                    truncated += 1;
                    continue;
                }
                let Some(seg) = decode(frame.data) else {
                    continue;
                };
                if seg.dst.port() != port || seg.payload.is_empty() {
                    continue;
                }
                // No gap; bytes TCP sent again (a tail-loss probe on a busy machine) are seen
                // again and skipped; every byte is its chunk's number.
                let mut payload = seg.payload;
                if let Some(seq) = next_seq {
                    let ahead = seg.seq.wrapping_sub(seq) as i32;
                    assert!(ahead <= 0, "{ahead} bytes missing after {got}");
                    payload = &payload[payload.len().min(ahead.unsigned_abs() as usize)..];
                }
                for (k, b) in payload.iter().enumerate() {
                    assert_eq!(*b as usize, (got + k) / CHUNK, "byte {}", got + k);
                }
                // Only forward: a resent segment wholly behind must not move it back.
                let end = seg.seq.wrapping_add(seg.payload.len() as u32);
                if next_seq.is_none_or(|s| end.wrapping_sub(s) as i32 > 0) {
                    next_seq = Some(end);
                }
                got += payload.len();
                largest = largest.max(seg.payload.len());
                let _ = captured_tx.send(got);
            }
        }
        sender.join().unwrap();
        server.join().unwrap();
        assert_eq!(got, CHUNK * CHUNKS);
        assert_eq!(truncated, 0);
        assert!(largest > 4096, "largest captured payload {largest}");
        assert_eq!(socket.stats().unwrap().drops, 0);
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
