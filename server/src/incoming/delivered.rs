//! The connections the agent delivered to the program itself, by the source address the
//! program sees, until the program's `accept` asks who the client was.
//!
//! Most entries are never asked for: the layer answers `accept` from its own cache once it
//! knows a client IP, so an entry usually leaves by age or by count. Both must cost O(1) per
//! delivery, whatever the number of entries: a mirror session on a busy pod adds one entry per
//! connection of the pod, thousands a second.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The client and the pod address of a delivered connection.
pub(super) type Peer = (SocketAddr, SocketAddr);

pub(super) struct Delivered {
    by_source: HashMap<SocketAddr, Entry>,
    /// Every insertion in order, oldest first: (source, its sequence number, when).
    ///
    /// Invariant: each entry of `by_source` has exactly one item here with its `seq`, so
    /// evicting from the front removes the oldest entries first and `by_source` is never
    /// larger than this queue. Items of entries taken or replaced since stay until they reach
    /// the front and are then skipped.
    order: VecDeque<(SocketAddr, u64, Instant)>,
    next_seq: u64,
    max: usize,
    kept: Duration,
}

struct Entry {
    peer: Peer,
    seq: u64,
}

impl Delivered {
    /// At most `max` entries; an entry older than `kept` goes at the next insertion.
    pub(super) fn new(max: usize, kept: Duration) -> Delivered {
        Delivered {
            by_source: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            max: max.max(1),
            kept,
        }
    }

    /// Records a delivery (a later one from the same source replaces it), then drops what is
    /// past the count or the age.
    pub(super) fn insert(&mut self, source: SocketAddr, peer: Peer, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_source.insert(source, Entry { peer, seq });
        self.order.push_back((source, seq, now));
        while let Some(&(old, old_seq, at)) = self.order.front() {
            if self.order.len() <= self.max && now.saturating_duration_since(at) < self.kept {
                break;
            }
            self.order.pop_front();
            if self.by_source.get(&old).is_some_and(|e| e.seq == old_seq) {
                self.by_source.remove(&old);
            }
        }
    }

    /// The delivery from `source`, once: the accept that took the connection asks.
    pub(super) fn take(&mut self, source: SocketAddr) -> Option<Peer> {
        self.by_source.remove(&source).map(|e| e.peer)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_source.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0x7f80_0000 + (i >> 16)), i as u16))
    }

    fn peer(i: u32) -> Peer {
        (
            SocketAddr::from(([10, 0, 0, 1], i as u16)),
            SocketAddr::from(([10, 0, 0, 2], 80)),
        )
    }

    #[test]
    fn an_entry_is_taken_once() {
        let mut d = Delivered::new(8, Duration::from_secs(60));
        let now = Instant::now();
        d.insert(addr(1), peer(1), now);
        assert_eq!(d.take(addr(1)), Some(peer(1)));
        assert_eq!(d.take(addr(1)), None);
        assert_eq!(d.take(addr(2)), None);
    }

    #[test]
    fn the_oldest_go_first_past_the_count() {
        let mut d = Delivered::new(100, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..1000 {
            d.insert(addr(i), peer(i), now);
            assert!(d.len() <= 100 && d.order.len() <= 100);
        }
        assert_eq!(d.take(addr(899)), None);
        assert_eq!(d.take(addr(900)), Some(peer(900)));
        assert_eq!(d.take(addr(999)), Some(peer(999)));
    }

    #[test]
    fn old_entries_go_at_the_next_delivery() {
        let mut d = Delivered::new(100, Duration::from_secs(60));
        let start = Instant::now();
        d.insert(addr(1), peer(1), start);
        d.insert(addr(2), peer(2), start + Duration::from_secs(30));
        d.insert(addr(3), peer(3), start + Duration::from_secs(61));
        assert_eq!(d.take(addr(1)), None);
        assert_eq!(d.take(addr(2)), Some(peer(2)));
        assert_eq!(d.take(addr(3)), Some(peer(3)));
    }

    #[test]
    fn a_source_used_again_keeps_its_new_entry_when_the_old_one_leaves() {
        let mut d = Delivered::new(3, Duration::from_secs(60));
        let now = Instant::now();
        d.insert(addr(1), peer(1), now);
        d.insert(addr(2), peer(2), now);
        // The client reused its port: same source, a new connection.
        d.insert(addr(1), peer(7), now);
        // Pushes the first item of addr(1) out of the queue: the entry is the newer one.
        d.insert(addr(3), peer(3), now);
        assert_eq!(d.take(addr(1)), Some(peer(7)));
        assert_eq!(d.take(addr(2)), Some(peer(2)));
    }

    #[test]
    fn taken_entries_do_not_let_the_queue_grow() {
        let mut d = Delivered::new(50, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..10_000 {
            d.insert(addr(i), peer(i), now);
            assert_eq!(d.take(addr(i)), Some(peer(i)));
            assert!(d.order.len() <= 50);
        }
        assert_eq!(d.len(), 0);
    }
}
