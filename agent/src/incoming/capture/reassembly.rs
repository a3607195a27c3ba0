//! TCP reassembly of captured segments into the two byte streams of each connection.
//!
//! Pure bookkeeping (no sockets, no clock of its own), so every case is unit-tested. A
//! connection is tracked from the client's SYN on: a connection already open when capture
//! starts is ignored, as the relay never saw those either, and a copy that starts mid-stream
//! (mid-request, mid-body) would only confuse the mirroring program.
//!
//! Per direction the stream position is kept as a 64-bit offset from the first byte after the
//! SYN; a segment's 32-bit sequence number is placed relative to that offset (wrapping), so a
//! stream longer than 4 GiB still reassembles. Segments ahead of the position wait in a bounded
//! out-of-order buffer; retransmitted and overlapping bytes are cut off, never delivered twice.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

/// A segment further ahead than this (or behind) is not of this stream (a stale or forged
/// packet): it is dropped instead of reserving buffer space for the gap.
const MAX_AHEAD: u64 = 1 << 30;

/// One captured TCP segment, headers decoded.
#[derive(Debug, Clone)]
pub struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: &'a [u8],
}

/// A connection: the client that opened it and the captured port it opened it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// Why a connection's copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions ended (FIN) or one side reset (RST).
    Finished,
    /// Its out-of-order buffer went over the limit (a lost segment that never came back).
    Overflow,
    /// The connection table was full and this one had been quiet the longest.
    Evicted,
    /// No segment for longer than the idle limit, or its port is no longer captured.
    Expired,
}

/// What reassembly produced, in capture order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Opened(ConnKey),
    /// In-order bytes of one direction.
    Data {
        key: ConnKey,
        from_client: bool,
        data: Bytes,
    },
    /// One direction ended (its FIN was reached in order).
    End {
        key: ConnKey,
        from_client: bool,
    },
    Closed {
        key: ConnKey,
        reason: CloseReason,
    },
}

/// Bounds on what reassembly keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections tracked at once; a new one evicts the quietest.
    pub max_connections: usize,
    /// Out-of-order bytes buffered per direction.
    pub max_pending_bytes: usize,
    /// Out-of-order bytes buffered over all connections.
    pub max_total_pending_bytes: usize,
}

/// What was dropped, for the logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub opened: u64,
    /// Connections dropped because the table was full.
    pub evicted: u64,
    /// Connections dropped because a direction's out-of-order buffer went over the limit.
    pub overflowed: u64,
    /// Connections dropped after being idle (or their port released).
    pub expired: u64,
    /// Segments of no tracked connection (started before capture, or after its end).
    pub untracked_segments: u64,
    /// Segments too far from the stream position to belong to it.
    pub wild_segments: u64,
}

#[derive(Debug, Default)]
struct Direction {
    /// Sequence number of the stream's first byte (ISN + 1); `None` until the SYN was seen.
    base: Option<u32>,
    /// Bytes delivered so far (the stream position).
    delivered: u64,
    /// Stream offset of the FIN, once seen.
    fin_at: Option<u64>,
    ended: bool,
    /// Out-of-order bytes by stream offset.
    // Invariant: every key is > `delivered` and `pending_bytes` is the sum of the values' lengths.
    pending: BTreeMap<u64, Bytes>,
    pending_bytes: usize,
}

#[derive(Debug)]
struct Conn {
    client_isn: u32,
    to_server: Direction,
    to_client: Direction,
    last_seen: u64,
}

pub struct Reassembler {
    limits: Limits,
    conns: HashMap<ConnKey, Conn>,
    // Invariant: the sum of every tracked direction's `pending_bytes`.
    total_pending: usize,
    pub counters: Counters,
}

impl Direction {
    fn new(isn: u32) -> Direction {
        Direction {
            base: Some(isn.wrapping_add(1)),
            ..Direction::default()
        }
    }

    /// Stream offset of the byte at `seq`, if it lies within reach of the position.
    fn offset(&self, seq: u32) -> Option<u64> {
        let base = self.base?;
        let rel = seq.wrapping_sub(base);
        // Distance from the position, modulo 2^32, as a signed number.
        let diff = rel.wrapping_sub(self.delivered as u32) as i32 as i64;
        let offset = self.delivered as i64 + diff;
        (offset >= 0 && diff.unsigned_abs() < MAX_AHEAD).then_some(offset as u64)
    }

    /// Takes a segment's payload at stream offset `at` (and its FIN); returns the bytes now in
    /// order, or `Err` when the out-of-order buffer would exceed `max_pending`.
    fn accept(
        &mut self,
        at: u64,
        payload: &[u8],
        fin: bool,
        max_pending: usize,
    ) -> Result<Vec<Bytes>, ()> {
        if fin && self.fin_at.is_none() {
            self.fin_at = Some(at + payload.len() as u64);
        }
        let mut out = Vec::new();
        let end = at + payload.len() as u64;
        if payload.is_empty() || end <= self.delivered {
            // A pure ACK, a keep-alive probe or a retransmission of delivered bytes.
        } else if at <= self.delivered {
            let skip = (self.delivered - at) as usize;
            let fresh = Bytes::copy_from_slice(&payload[skip..]);
            self.delivered += fresh.len() as u64;
            out.push(fresh);
            self.drain(&mut out);
        } else {
            if self.pending_bytes + payload.len() > max_pending {
                return Err(());
            }
            // A segment at an offset already waiting keeps the longer of the two.
            let keep = match self.pending.get(&at) {
                Some(old) => old.len() < payload.len(),
                None => true,
            };
            if keep {
                let new = Bytes::copy_from_slice(payload);
                self.pending_bytes += new.len();
                if let Some(old) = self.pending.insert(at, new) {
                    self.pending_bytes -= old.len();
                }
            }
        }
        Ok(out)
    }

    /// Moves the waiting segments that are now in order (trimmed of what overlaps) to `out`.
    fn drain(&mut self, out: &mut Vec<Bytes>) {
        while let Some((&at, _)) = self.pending.first_key_value() {
            if at > self.delivered {
                break;
            }
            let Some((_, data)) = self.pending.pop_first() else {
                break;
            };
            self.pending_bytes -= data.len();
            let end = at + data.len() as u64;
            if end > self.delivered {
                let fresh = data.slice((self.delivered - at) as usize..);
                self.delivered += fresh.len() as u64;
                out.push(fresh);
            }
        }
    }

    /// Whether the FIN was reached in order (and not reported yet).
    fn reaches_end(&mut self) -> bool {
        if !self.ended && self.fin_at.is_some_and(|f| f <= self.delivered) {
            self.ended = true;
            return true;
        }
        false
    }
}

impl Reassembler {
    pub fn new(limits: Limits) -> Reassembler {
        Reassembler {
            limits,
            conns: HashMap::new(),
            total_pending: 0,
            counters: Counters::default(),
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Takes one segment captured at `now` (any monotonic tick); `captured(port)` says whether
    /// a SYN to `port` opens a connection to track. Events are appended to `events`.
    pub fn handle(
        &mut self,
        seg: &Segment<'_>,
        now: u64,
        captured: impl Fn(u16) -> bool,
        events: &mut Vec<Event>,
    ) {
        let forward = ConnKey {
            client: seg.src,
            server: seg.dst,
        };
        if seg.syn && !seg.ack && !seg.rst {
            if let Some(conn) = self.conns.get_mut(&forward) {
                if conn.client_isn == seg.seq {
                    // The SYN again (a retransmission).
                    conn.last_seen = now;
                    return;
                }
                // The same four-tuple reused by a new connection: the old one is over.
                self.close(forward, CloseReason::Finished, events);
            }
            if !captured(seg.dst.port()) {
                self.counters.untracked_segments += 1;
                return;
            }
            if self.conns.len() >= self.limits.max_connections {
                self.evict_quietest(events);
            }
            let mut conn = Conn {
                client_isn: seg.seq,
                to_server: Direction::new(seg.seq),
                to_client: Direction::default(),
                last_seen: now,
            };
            events.push(Event::Opened(forward));
            self.counters.opened += 1;
            // Data on a SYN (TCP Fast Open) starts the stream; at the stream's position it is
            // delivered at once, never buffered.
            if let Ok(chunks) = conn.to_server.accept(0, seg.payload, seg.fin, 0) {
                push_data(events, forward, true, chunks);
            }
            self.conns.insert(forward, conn);
            self.after_segment(forward, true, events);
            return;
        }
        let reverse = ConnKey {
            client: seg.dst,
            server: seg.src,
        };
        let (key, from_client) = if self.conns.contains_key(&forward) {
            (forward, true)
        } else if self.conns.contains_key(&reverse) {
            (reverse, false)
        } else {
            self.counters.untracked_segments += 1;
            return;
        };
        if seg.rst {
            self.close(key, CloseReason::Finished, events);
            return;
        }
        let max_pending = self.limits.max_pending_bytes;
        // Invariant: `key` is in the table (checked just above, nothing removed since).
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.last_seen = now;
        let dir = if from_client {
            &mut conn.to_server
        } else {
            &mut conn.to_client
        };
        let mut seq = seg.seq;
        if seg.syn {
            // The server's SYN-ACK starts its direction (a repeated one changes nothing).
            if dir.base.is_none() {
                *dir = Direction::new(seg.seq);
            }
            seq = seq.wrapping_add(1);
        }
        let Some(at) = dir.offset(seq) else {
            // Bytes of the server before its SYN-ACK was seen, or far off the stream.
            self.counters.wild_segments += 1;
            return;
        };
        let room = self.limits.max_total_pending_bytes - self.total_pending;
        let before = dir.pending_bytes;
        match dir.accept(at, seg.payload, seg.fin, max_pending.min(before + room)) {
            Ok(chunks) => {
                self.total_pending = self.total_pending + dir.pending_bytes - before;
                push_data(events, key, from_client, chunks)
            }
            Err(()) => {
                self.counters.overflowed += 1;
                self.close(key, CloseReason::Overflow, events);
                return;
            }
        }
        self.after_segment(key, from_client, events);
    }

    /// Reports a direction that reached its FIN, and closes a connection whose both did.
    fn after_segment(&mut self, key: ConnKey, from_client: bool, events: &mut Vec<Event>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let dir = if from_client {
            &mut conn.to_server
        } else {
            &mut conn.to_client
        };
        if dir.reaches_end() {
            events.push(Event::End { key, from_client });
        }
        if conn.to_server.ended && conn.to_client.ended {
            self.close(key, CloseReason::Finished, events);
        }
    }

    fn close(&mut self, key: ConnKey, reason: CloseReason, events: &mut Vec<Event>) {
        if let Some(conn) = self.conns.remove(&key) {
            self.total_pending -= conn.to_server.pending_bytes + conn.to_client.pending_bytes;
            events.push(Event::Closed { key, reason });
        }
    }

    fn evict_quietest(&mut self, events: &mut Vec<Event>) {
        let quietest = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_seen)
            .map(|(k, _)| *k);
        if let Some(key) = quietest {
            self.counters.evicted += 1;
            self.close(key, CloseReason::Evicted, events);
        }
    }

    /// Closes the connections quiet since before `idle_before`, or whose port `keep` refuses.
    pub fn expire(
        &mut self,
        idle_before: u64,
        keep: impl Fn(u16) -> bool,
        events: &mut Vec<Event>,
    ) {
        let gone: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(k, c)| c.last_seen < idle_before || !keep(k.server.port()))
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            self.counters.expired += 1;
            self.close(key, CloseReason::Expired, events);
        }
    }
}

fn push_data(events: &mut Vec<Event>, key: ConnKey, from_client: bool, chunks: Vec<Bytes>) {
    for data in chunks {
        events.push(Event::Data {
            key,
            from_client,
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CLIENT: &str = "10.244.0.9:40000";
    const SERVER: &str = "10.244.1.5:80";
    const CISN: u32 = 1000;
    const SISN: u32 = u32::MAX - 2; // the server's stream wraps after 2 bytes

    fn limits() -> Limits {
        Limits {
            max_connections: 4,
            max_pending_bytes: 64,
            max_total_pending_bytes: 100,
        }
    }

    fn seg<'a>(from_client: bool, seq: u32, flags: &str, payload: &'a [u8]) -> Segment<'a> {
        let (c, s) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
        let (src, dst) = if from_client { (c, s) } else { (s, c) };
        Segment {
            src,
            dst,
            seq,
            syn: flags.contains('S'),
            ack: flags.contains('A'),
            fin: flags.contains('F'),
            rst: flags.contains('R'),
            payload,
        }
    }

    /// Feeds segments; returns each direction's delivered bytes and the other events.
    struct Run {
        r: Reassembler,
        events: Vec<Event>,
    }

    impl Run {
        fn new() -> Run {
            let mut run = Run {
                r: Reassembler::new(limits()),
                events: Vec::new(),
            };
            run.feed(seg(true, CISN, "S", b""));
            run.feed(seg(false, SISN, "SA", b""));
            run
        }
        fn feed(&mut self, s: Segment<'_>) {
            self.r.handle(&s, 0, |p| p == 80, &mut self.events);
        }
        fn stream(&self, from_client: bool) -> Vec<u8> {
            let mut out = Vec::new();
            for e in &self.events {
                if let Event::Data {
                    from_client: f,
                    data,
                    ..
                } = e
                {
                    if *f == from_client {
                        out.extend_from_slice(data);
                    }
                }
            }
            out
        }
        fn closed(&self) -> Option<CloseReason> {
            self.events.iter().find_map(|e| match e {
                Event::Closed { reason, .. } => Some(*reason),
                _ => None,
            })
        }
    }

    #[test]
    fn in_order_both_directions() {
        let mut run = Run::new();
        run.feed(seg(true, CISN + 1, "A", b"GET / HTTP/1.1\r\n\r\n"));
        run.feed(seg(
            false,
            SISN.wrapping_add(1),
            "A",
            b"HTTP/1.1 200 OK\r\n",
        ));
        assert_eq!(run.stream(true), b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(run.stream(false), b"HTTP/1.1 200 OK\r\n");
        assert!(matches!(run.events[0], Event::Opened(_)));
    }

    #[test]
    fn out_of_order_is_put_back_in_order() {
        let mut run = Run::new();
        run.feed(seg(true, CISN + 1 + 6, "A", b"world"));
        run.feed(seg(true, CISN + 1 + 3, "A", b"lo "));
        assert_eq!(run.stream(true), b"");
        run.feed(seg(true, CISN + 1, "A", b"hel"));
        assert_eq!(run.stream(true), b"hello world");
    }

    #[test]
    fn duplicates_and_overlaps_are_delivered_once() {
        let mut run = Run::new();
        run.feed(seg(true, CISN + 1, "A", b"abcd"));
        run.feed(seg(true, CISN + 1, "A", b"abcd"));
        // Overlaps the delivered bytes and brings two new ones.
        run.feed(seg(true, CISN + 3, "A", b"cdef"));
        // Two overlapping segments waiting ahead of a gap at "g".
        run.feed(seg(true, CISN + 1 + 7, "A", b"hij"));
        run.feed(seg(true, CISN + 1 + 8, "A", b"ijkl"));
        run.feed(seg(true, CISN + 1 + 6, "A", b"gh"));
        assert_eq!(run.stream(true), b"abcdefghijkl");
    }

    #[test]
    fn server_stream_wraps_around_sequence_zero() {
        let mut run = Run::new();
        // SISN + 1 = u32::MAX - 1: "ab" ends at u32::MAX, "cd" starts at 0.
        run.feed(seg(false, 0, "A", b"cd"));
        run.feed(seg(false, SISN.wrapping_add(1), "A", b"ab"));
        assert_eq!(run.stream(false), b"abcd");
    }

    #[test]
    fn fin_in_both_directions_closes_after_the_last_byte() {
        let mut run = Run::new();
        // The client's FIN arrives before its last data.
        run.feed(seg(true, CISN + 1 + 2, "AF", b"c"));
        assert!(!run.events.iter().any(|e| matches!(e, Event::End { .. })));
        run.feed(seg(true, CISN + 1, "A", b"ab"));
        assert!(run.events.iter().any(|e| matches!(
            e,
            Event::End {
                from_client: true,
                ..
            }
        )));
        assert_eq!(run.closed(), None);
        run.feed(seg(false, SISN.wrapping_add(1), "AF", b"ok"));
        assert_eq!(run.stream(false), b"ok");
        assert_eq!(run.closed(), Some(CloseReason::Finished));
        assert_eq!(run.r.connections(), 0);
        // A retransmitted FIN after the close belongs to nothing.
        run.feed(seg(false, SISN.wrapping_add(1), "AF", b"ok"));
        assert_eq!(run.stream(false), b"ok");
    }

    #[test]
    fn rst_from_either_side_closes() {
        let mut run = Run::new();
        run.feed(seg(true, CISN + 1, "A", b"x"));
        run.feed(seg(false, SISN.wrapping_add(1), "R", b""));
        assert_eq!(run.closed(), Some(CloseReason::Finished));
        assert_eq!(run.r.connections(), 0);
    }

    #[test]
    fn uncaptured_ports_and_mid_stream_connections_are_ignored() {
        let mut r = Reassembler::new(limits());
        let mut events = Vec::new();
        // Mid-stream: no SYN seen.
        r.handle(&seg(true, 5, "A", b"data"), 0, |_| true, &mut events);
        // A SYN to a port that is not captured.
        r.handle(&seg(true, 5, "S", b""), 0, |_| false, &mut events);
        assert!(events.is_empty());
        assert_eq!(r.counters.untracked_segments, 2);
    }

    #[test]
    fn a_gap_that_never_fills_overflows_the_buffer_and_closes() {
        let mut run = Run::new();
        run.feed(seg(true, CISN + 1 + 10, "A", &[b'x'; 60]));
        run.feed(seg(true, CISN + 1 + 70, "A", &[b'y'; 10]));
        assert_eq!(run.closed(), Some(CloseReason::Overflow));
        assert_eq!(run.r.counters.overflowed, 1);
    }

    #[test]
    fn the_buffers_of_all_connections_share_one_limit() {
        let mut run = Run::new();
        // The client's direction waits with 60 bytes; the server's may add only 40 more.
        run.feed(seg(true, CISN + 1 + 10, "A", &[b'x'; 60]));
        assert_eq!(run.closed(), None);
        run.feed(seg(false, SISN.wrapping_add(11), "A", &[b'y'; 41]));
        assert_eq!(run.closed(), Some(CloseReason::Overflow));
        assert_eq!(run.r.total_pending, 0);
    }

    #[test]
    fn a_full_table_evicts_the_quietest_connection() {
        let mut r = Reassembler::new(limits());
        let mut events = Vec::new();
        for (i, port) in (40000u16..40005).enumerate() {
            let s = Segment {
                src: format!("10.244.0.9:{port}").parse().unwrap(),
                dst: SERVER.parse().unwrap(),
                seq: 1,
                syn: true,
                ack: false,
                fin: false,
                rst: false,
                payload: b"",
            };
            r.handle(&s, i as u64, |_| true, &mut events);
        }
        assert_eq!(r.connections(), 4);
        assert_eq!(r.counters.evicted, 1);
        let evicted = events.iter().find_map(|e| match e {
            Event::Closed {
                key,
                reason: CloseReason::Evicted,
            } => Some(key.client.port()),
            _ => None,
        });
        assert_eq!(evicted, Some(40000));
    }

    #[test]
    fn idle_connections_and_released_ports_expire() {
        let mut run = Run::new();
        let mut events = Vec::new();
        run.r.expire(0, |_| true, &mut events);
        assert!(events.is_empty());
        run.r.expire(0, |p| p != 80, &mut events);
        assert_eq!(run.r.connections(), 0);
        assert_eq!(run.r.counters.expired, 1);
    }

    #[test]
    fn a_new_syn_on_the_same_tuple_replaces_the_old_connection() {
        let mut run = Run::new();
        run.feed(seg(true, CISN, "S", b""));
        assert_eq!(run.closed(), None, "a retransmitted SYN changes nothing");
        run.feed(seg(true, 77, "S", b""));
        assert_eq!(run.closed(), Some(CloseReason::Finished));
        assert_eq!(run.r.connections(), 1);
    }

    fn arb_segment() -> impl Strategy<Value = (bool, u32, u8, Vec<u8>, u64)> {
        (
            any::<bool>(),
            prop_oneof![
                any::<u32>(),
                (0u32..200).prop_map(|d| CISN.wrapping_add(d)),
                (0u32..200).prop_map(|d| SISN.wrapping_add(d)),
            ],
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..80),
            0u64..10,
        )
    }

    proptest! {
        /// Hostile segments (any flags, sequence numbers, payloads) never panic, and the
        /// buffers stay within their limits.
        #[test]
        fn hostile_segments_never_panic(segs in proptest::collection::vec(arb_segment(), 0..200)) {
            let mut r = Reassembler::new(limits());
            let mut events = Vec::new();
            for (from_client, seq, flags, payload, now) in &segs {
                let mut s = seg(*from_client, *seq, "", payload);
                s.syn = flags & 1 != 0;
                s.ack = flags & 2 != 0;
                s.fin = flags & 4 != 0;
                s.rst = flags & 8 != 0;
                r.handle(&s, *now, |p| p == 80, &mut events);
                let mut total = 0;
                for c in r.conns.values() {
                    prop_assert!(c.to_server.pending_bytes <= limits().max_pending_bytes);
                    prop_assert!(c.to_client.pending_bytes <= limits().max_pending_bytes);
                    total += c.to_server.pending_bytes + c.to_client.pending_bytes;
                }
                prop_assert_eq!(total, r.total_pending);
                prop_assert!(total <= limits().max_total_pending_bytes);
                prop_assert!(r.connections() <= limits().max_connections);
            }
        }

        /// Any split of a stream into segments, delivered in any order with duplicates,
        /// reassembles into the stream.
        #[test]
        fn any_order_reassembles(
            data in proptest::collection::vec(any::<u8>(), 1..60),
            cuts in proptest::collection::vec(0usize..60, 0..8),
            order in proptest::collection::vec(any::<u16>(), 0..16),
        ) {
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % data.len()).collect();
            bounds.push(0);
            bounds.push(data.len());
            bounds.sort();
            bounds.dedup();
            let mut pieces: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
            // Shuffle with duplicates: every piece at least once, some again.
            for (i, o) in order.iter().enumerate() {
                let n = pieces.len();
                pieces.swap(i % n, *o as usize % n);
                if o % 3 == 0 {
                    pieces.push(pieces[*o as usize % n]);
                }
            }
            let mut run = Run::new();
            run.r.limits.max_pending_bytes = 1 << 20;
            run.r.limits.max_total_pending_bytes = 1 << 20;
            for (a, b) in pieces {
                run.feed(seg(true, CISN + 1 + a as u32, "A", &data[a..b]));
            }
            prop_assert_eq!(run.stream(true), data);
        }
    }
}
