//! The queue of traffic-view events of one control channel (`HttpRequest`,
//! `OutgoingConnection`, a repeat client's `Delivered`): flows push into it, the channel's
//! writer (`listener::write_messages`) sends them in batches.
//!
//! flows --traffic-view events--> the control channel's writer task
//!
//! Why not a plain channel the writer listens on: every event would wake the writer's thread
//! (one cross-CPU wake-up per request or connection, on the machine of the pod the agent
//! watches). Here only the first event of a batch wakes the writer, which then sleeps for the
//! batch's time, and a batch that reaches [`BATCH_LEN`] events wakes it early.

use mirrord_protocol::agent::AgentMessage;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Events queued per control channel; when full, new ones are lost (the view never holds up a
/// flow).
const QUEUE: usize = 1024;
/// How long a traffic-view event may wait to share a write with later ones.
pub const BATCH: Duration = Duration::from_millis(20);
/// Events written together at most: this many queued wake the writer before [`BATCH`] is up.
pub const BATCH_LEN: usize = 64;

/// The flows' end of the queue.
#[derive(Clone)]
pub struct TrafficTx {
    tx: mpsc::Sender<AgentMessage>,
    /// --"a batch is full"--> the writer
    full: Arc<Notify>,
}

/// The writer's end.
pub struct TrafficRx {
    pub rx: mpsc::Receiver<AgentMessage>,
    pub full: Arc<Notify>,
}

pub fn channel() -> (TrafficTx, TrafficRx) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let full = Arc::new(Notify::new());
    (
        TrafficTx {
            tx,
            full: full.clone(),
        },
        TrafficRx { rx, full },
    )
}

impl TrafficTx {
    /// Queues `message` for the next batch, or loses it if the queue is full.
    pub fn send(&self, message: AgentMessage) {
        if self.tx.try_send(message).is_err() {
            return;
        }
        let queued = self.tx.max_capacity() - self.tx.capacity();
        if queued >= BATCH_LEN {
            // A stored permit if the writer is not waiting yet: it flushes on its next wait.
            self.full.notify_one();
        }
    }

    /// The control channel (and its writer) is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
