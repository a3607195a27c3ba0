//! Mirror by capture: the ports whose subscribers only copy (mirror, observe) are not
//! redirected; their packets are captured in the target's network namespace (`socket`, with the
//! filter of `bpf`), put back into byte streams (`reassembly`) and fed to the same copy queues
//! the relay feeds (`passthrough::CopySinks`), so the target's own traffic never crosses the
//! agent.
//!
//! One socket serves every captured port, its filter rebuilt when the set changes: one packet
//! copy per packet whatever the number of ports, and one task to read it. The socket exists
//! while at least one port is captured (`Capture::stop` closes it with the last one).
//!
//! What capture can lose, and counts: packets the kernel drops while every block of the ring is
//! still the agent's (the agent fell behind; `tp_drops`), connections whose out-of-order buffer
//! overflows (a segment lost to such a drop never comes back), connections evicted from a full
//! table, packets longer than a ring block. A lost copy never affects the target.

mod bpf;
pub mod reassembly;
mod ring;
mod socket;

use super::passthrough::CopySinks;
use super::IncomingState;
use crate::redirect::AGENT_MARK;
use anyhow::{Context, Result};
use mirrord_protocol::agent::TrafficMode;
use reassembly::{ConnKey, Event, Limits, Reassembler};
use ring::Ring;
use socket::PacketSocket;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub use bpf::MAX_PORTS;

/// Bounds of the reassembly (see `reassembly::Limits`): 16 Ki connections at once, 4 MiB of
/// out-of-order bytes per direction and 64 MiB in all (a gap is a lost packet: waiting longer
/// for it only delays the copy's end).
const LIMITS: Limits = Limits {
    max_connections: 16 * 1024,
    max_pending_bytes: 4 << 20,
    max_total_pending_bytes: 64 << 20,
};
/// A connection with no packet for this long is dropped from the table (its FIN or RST was
/// lost, or it is simply idle: a later segment of it is then ignored).
const IDLE: Duration = Duration::from_secs(600);
/// How often idle connections and the kernel's drop counter are looked at.
const SWEEP: Duration = Duration::from_secs(1);
/// Events handed to the copy queues at once while a backlog is read.
const DISPATCH_EVERY: usize = 64;

/// The capture of this agent's mirror-only ports.
pub struct Capture {
    socket: Arc<PacketSocket>,
    /// The captured ports; the read loop reads it at each batch, `set_ports` writes it.
    ports: Arc<Mutex<BTreeSet<u16>>>,
    lo_index: u32,
    /// registry --stop (by being dropped)--> the capture thread
    _stop_tx: oneshot::Sender<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Capture {
    /// Opens the capture socket (in the agent's namespace, the target's) for `ports` and starts
    /// reading it on a thread of its own at a lower priority (nice [`CAPTURE_NICE`]): on a busy
    /// machine the target's own work preempts the copies, never the other way round. The
    /// copies' tasks (announce, writes to the clients' channels) run on that thread too.
    pub fn start(state: Weak<IncomingState>, ports: BTreeSet<u16>) -> Result<Capture> {
        let lo_index = socket::loopback_index().context("finding the loopback interface")?;
        let filter = filter_for(&ports, lo_index)?;
        let (socket, ring) = PacketSocket::open(&filter)
            .context("opening the capture socket (AF_PACKET needs CAP_NET_RAW)")?;
        let socket = Arc::new(socket);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("making the capture's runtime")?;
        let ports = Arc::new(Mutex::new(ports));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (thread_socket, thread_ports) = (socket.clone(), ports.clone());
        std::thread::Builder::new()
            .name("mirrord-capture".into())
            .spawn(move || {
                lower_this_threads_priority();
                runtime.block_on(async move {
                    tokio::select! {
                        _ = read_loop(thread_socket, ring, thread_ports, state) => {}
                        // Dropped with the Capture: the last captured port was released.
                        _ = stop_rx => {}
                    }
                });
            })
            .context("starting the capture thread")?;
        Ok(Capture {
            socket,
            ports,
            lo_index,
            _stop_tx: stop_tx,
        })
    }

    /// Captures exactly `ports` from now on.
    pub fn set_ports(&self, ports: BTreeSet<u16>) -> Result<()> {
        let filter = filter_for(&ports, self.lo_index)?;
        self.socket
            .set_filter(&filter)
            .context("replacing the capture filter")?;
        *lock(&self.ports) = ports;
        Ok(())
    }

    /// Stops reading; the socket closes when the capture thread lets go of it.
    pub fn stop(self) {
        drop(self);
    }
}

/// Nice value of the capture thread (the relay's bulk threads use the same idea).
const CAPTURE_NICE: libc::c_int = 10;

/// Raises this thread's nice value (Linux schedules threads, so the agent's other threads keep
/// theirs). A failure only costs the priority.
fn lower_this_threads_priority() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority on our own thread id; no memory is passed.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, CAPTURE_NICE) };
    if r != 0 {
        tracing::debug!(
            "the capture thread keeps its priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn filter_for(ports: &BTreeSet<u16>, lo_index: u32) -> Result<Vec<socket2::SockFilter>> {
    let ports: Vec<u16> = ports.iter().copied().collect();
    bpf::program(&ports, lo_index, AGENT_MARK)
        .with_context(|| format!("more than {} captured ports", bpf::MAX_PORTS))
}

/// One captured connection's copy queues, and which of its directions already ended.
struct Copied {
    sinks: CopySinks,
    ended: [bool; 2],
}

async fn read_loop(
    socket: Arc<PacketSocket>,
    mut ring: Ring,
    ports: Arc<Mutex<BTreeSet<u16>>>,
    state: Weak<IncomingState>,
) {
    let mut reassembler = Reassembler::new(LIMITS);
    let mut copies: HashMap<ConnKey, Copied> = HashMap::new();
    let mut events = Vec::new();
    let start = Instant::now();
    let mut sweep = tokio::time::interval(SWEEP);
    let mut truncated = 0u64;
    let mut kernel_drops = 0u64;
    let mut kernel_packets = 0u64;
    let mut last_lost = (0u64, 0u64, 0u64);
    let fd = match socket.register() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("capture socket not readable, mirror copies stop: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            ready = fd.readable() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!("capture socket failed, mirror copies stop: {e}");
                        return;
                    }
                };
                let now = start.elapsed().as_millis() as u64;
                // A snapshot per batch: a port added meanwhile is seen at the next batch.
                let captured = lock(&ports).clone();
                // The kernel wakes this thread only when it closes a block of the ring (full,
                // or `ring::BLOCK_TIMEOUT_MS` after its first packet): every closed block is
                // read here without a system call.
                loop {
                    match ring.next_frame() {
                        Some(frame) if frame.truncated => truncated += 1,
                        Some(frame) => {
                            if let Some(seg) = socket::decode(frame.data) {
                                reassembler.handle(&seg, now, |p| captured.contains(&p), &mut events);
                            }
                        }
                        None => {
                            // Invariant: cleared only after the ring had no closed block left;
                            // a block closed since then has woken the runtime again.
                            guard.clear_ready();
                            break;
                        }
                    }
                    if events.len() >= DISPATCH_EVERY {
                        let Some(state) = state.upgrade() else { return };
                        dispatch(&state, &mut events, &mut copies);
                        drop(state);
                        // The copies' writers run on this thread too: let them drain their
                        // queues before more is pushed (a full queue ends that copy).
                        tokio::task::yield_now().await;
                    }
                }
                let Some(state) = state.upgrade() else { return };
                dispatch(&state, &mut events, &mut copies);
                drop(state);
            }
            _ = sweep.tick() => {
                let now = start.elapsed().as_millis() as u64;
                let idle_before = now.saturating_sub(IDLE.as_millis() as u64);
                let captured = lock(&ports).clone();
                reassembler.expire(idle_before, |p| captured.contains(&p), &mut events);
                let Some(state) = state.upgrade() else { return };
                dispatch(&state, &mut events, &mut copies);
                if let Ok(stats) = socket.stats() {
                    kernel_packets += stats.packets;
                    if stats.drops > 0 {
                        kernel_drops += stats.drops;
                        tracing::warn!(
                            dropped = stats.drops,
                            total = kernel_drops,
                            "the capture socket's buffer overflowed: mirror copies lost packets"
                        );
                    }
                }
                let c = reassembler.counters;
                let lost = (c.evicted, c.overflowed, truncated);
                if lost != last_lost {
                    last_lost = lost;
                    tracing::warn!(
                        evicted = c.evicted,
                        overflowed = c.overflowed,
                        truncated,
                        "capture dropped connections' copies (totals since it started)"
                    );
                }
                tracing::trace!(
                    connections = reassembler.connections(),
                    opened = c.opened,
                    expired = c.expired,
                    untracked = c.untracked_segments,
                    wild = c.wild_segments,
                    packets = kernel_packets,
                    "capture"
                );
            }
        }
    }
}

/// Feeds reassembly's events to the copy queues: a new connection is announced to the port's
/// mirroring and observing subscribers (as a relayed one is), its bytes follow.
fn dispatch(
    state: &Arc<IncomingState>,
    events: &mut Vec<Event>,
    copies: &mut HashMap<ConnKey, Copied>,
) {
    for event in events.drain(..) {
        match event {
            Event::Opened(key) => {
                let port = key.server.port();
                let mirrors: Vec<_> = state
                    .registry
                    .subscribers(port)
                    .into_iter()
                    .filter(|s| matches!(s.mode, TrafficMode::Mirror | TrafficMode::Observe))
                    .collect();
                let sinks = state.copy_sinks(&mirrors, key.client, key.server, port);
                if !sinks.is_empty() {
                    copies.insert(
                        key,
                        Copied {
                            sinks,
                            ended: [false; 2],
                        },
                    );
                }
            }
            Event::Data {
                key,
                from_client,
                data,
            } => {
                if let Some(c) = copies.get_mut(&key) {
                    c.sinks.send(from_client, &data);
                }
            }
            Event::End { key, from_client } => {
                if let Some(c) = copies.get_mut(&key) {
                    c.ended[usize::from(from_client)] = true;
                    c.sinks.end(from_client);
                }
            }
            Event::Closed { key, reason } => {
                if let Some(mut c) = copies.remove(&key) {
                    if reason != reassembly::CloseReason::Finished {
                        tracing::debug!(client = %key.client, ?reason, "capture dropped a connection");
                    }
                    for from_client in [true, false] {
                        if !c.ended[usize::from(from_client)] {
                            c.sinks.end(from_client);
                        }
                    }
                }
            }
        }
    }
}
