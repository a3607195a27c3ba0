//! A session's traffic events: pushed live to subscribers and kept in a bounded history.

use mirrord_protocol::api::TrafficEvent;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Events kept per session for `mirrord/trafficHistory`.
pub const HISTORY_LEN: usize = 2000;

pub struct TrafficLog {
    /// session --events--> live subscribers (the daemon's notification pumps)
    live_tx: broadcast::Sender<TrafficEvent>,
    history: Mutex<VecDeque<TrafficEvent>>,
}

impl Default for TrafficLog {
    fn default() -> Self {
        TrafficLog {
            live_tx: broadcast::channel(1024).0,
            history: Mutex::new(VecDeque::with_capacity(64)),
        }
    }
}

impl TrafficLog {
    pub fn emit(&self, event: TrafficEvent) {
        tracing::debug!(?event, "traffic");
        {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            if h.len() == HISTORY_LEN {
                h.pop_front();
            }
            h.push_back(event.clone());
        }
        // No subscriber is fine: the history has it.
        let _ = self.live_tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<TrafficEvent> {
        self.live_tx.subscribe()
    }

    /// The last `limit` events (all of them without a limit), oldest first.
    pub fn history(&self, limit: Option<usize>) -> Vec<TrafficEvent> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let skip = limit.map(|l| h.len().saturating_sub(l)).unwrap_or(0);
        h.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_limited() {
        let log = TrafficLog::default();
        for i in 0..(HISTORY_LEN + 5) {
            log.emit(TrafficEvent::Error {
                time: i as u64,
                message: String::new(),
            });
        }
        let all = log.history(None);
        assert_eq!(all.len(), HISTORY_LEN);
        assert!(matches!(all[0], TrafficEvent::Error { time: 5, .. }));
        let last = log.history(Some(2));
        assert!(
            matches!(last[1], TrafficEvent::Error { time, .. } if time == (HISTORY_LEN + 4) as u64)
        );
    }
}
