//! Which runtime a flow's bytes are moved on: the caller's while the flow is interactive, the
//! process-wide bulk runtime (threads at a lower priority) while it moves bulk data.

use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::copy::Relay;

/// The span over which a flow's bytes are counted.
pub const BULK_WINDOW: Duration = Duration::from_millis(100);
/// Bytes within one window that make a flow bulk (10 MiB/s and up). A page, an API answer or a
/// keep-alive request loop stays below it; a download or an upload crosses it at once.
pub const BULK_BYTES: u64 = 1024 * 1024;
/// A bulk flow that moved less than this in a window of [`QUIET_WINDOW`] is interactive again.
pub const QUIET_BYTES: u64 = 64 * 1024;
pub const QUIET_WINDOW: Duration = Duration::from_millis(500);
/// The bulk threads' nice value. Low enough for the scheduler to preempt them as soon as an
/// interactive thread wakes; high enough that a bulk flow still gets a fair share of a busy
/// machine (nice 10 weighs about a tenth of nice 0).
pub const BULK_NICE: libc::c_int = 10;
/// How recently an interactive flow of this process must have moved bytes for bulk flows to
/// step aside completely (run on the [`Class::Yielding`] threads).
pub const INTERACTIVE_RECENT: Duration = Duration::from_millis(200);

/// A flow on the [`Class::Yielding`] threads that moves less than [`STARVED_BYTES`] within
/// [`STARVED_CHECK`] is starved (the CPU is busy with other work, and `SCHED_IDLE` gets next to
/// nothing of it): it moves to the niced threads for [`NICED_HOLD`] before it may yield again.
/// A download then keeps most of the niced rate on a busy machine while requests are active
/// (measured: ~4 MiB/s yielding only, against ~50 MiB/s niced, with two busy loops beside).
pub const STARVED_CHECK: Duration = Duration::from_millis(250);
pub const STARVED_BYTES: u64 = 2 * 1024 * 1024;
pub const NICED_HOLD: Duration = Duration::from_secs(1);

/// The two kinds of bulk threads. A thread cannot leave `SCHED_IDLE` again without
/// `CAP_SYS_NICE` (nor lower its nice value), so each kind has threads of its own and a bulk flow
/// moves between them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    /// Nice [`BULK_NICE`]: preempted when an interactive thread wakes, but still a tenth of a
    /// busy core's share, so a download on a machine busy with other work (a build) keeps going.
    Niced,
    /// `SCHED_IDLE`: runs only on CPU time no other thread wants. Used while an interactive flow
    /// of the same process is active: nice 10 alone still let a download's copies delay a
    /// keep-alive request several times over on 2 cores (BENCHMARKS.md, Kubernetes), and
    /// the requests are what the user is looking at. Never used without such a flow: with the
    /// CPU busy otherwise, `SCHED_IDLE` starved a download to ~1.5 MiB/s (measured with two
    /// busy loops beside it), where nice 10 kept ~70 MiB/s.
    Yielding,
}

/// What ended a phase of a flow.
enum Phase {
    /// The flow has ended (both directions, or an error).
    Ended(io::Result<()>),
    /// The interactive flow started to move bulk data.
    TurnedBulk,
    /// The bulk flow went quiet.
    TurnedQuiet,
    /// The bulk flow should run on the other [`Class`] of bulk threads.
    Reclass(Class),
}

/// When an interactive flow of this process last moved bytes, in milliseconds since
/// [`epoch`] (0: never), and which flow that was; `OTHER_MS` is when a flow other than
/// `LAST_FLOW` last did. A flow that turns bulk moved bytes as an interactive flow a moment
/// before: its own bytes must not make it step aside for itself. (Updates race; the answer is
/// approximate by a request or two, which is all the choice of threads needs.)
static LAST_INTERACTIVE_MS: AtomicU64 = AtomicU64::new(0);
static LAST_FLOW: AtomicU64 = AtomicU64::new(0);
static OTHER_MS: AtomicU64 = AtomicU64::new(0);
static NEXT_FLOW: AtomicU64 = AtomicU64::new(1);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1: 0 means "never".
    epoch().elapsed().as_millis() as u64 + 1
}

fn note_interactive_bytes(flow: u64) {
    let previous = LAST_FLOW.swap(flow, Ordering::Relaxed);
    if previous != flow {
        OTHER_MS.store(
            LAST_INTERACTIVE_MS.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }
    LAST_INTERACTIVE_MS.store(now_ms(), Ordering::Relaxed);
}

/// The class the bulk flow `flow` should run in now: yielding while another flow of this
/// process is interactive.
fn wanted_class(flow: u64) -> Class {
    let last = if LAST_FLOW.load(Ordering::Relaxed) == flow {
        OTHER_MS.load(Ordering::Relaxed)
    } else {
        LAST_INTERACTIVE_MS.load(Ordering::Relaxed)
    };
    let now = now_ms();
    if last != 0 && now.saturating_sub(last) <= INTERACTIVE_RECENT.as_millis() as u64 {
        Class::Yielding
    } else {
        Class::Niced
    }
}

/// Bytes moved in the current window.
struct Window {
    start: Instant,
    start_moved: u64,
}

impl Window {
    fn new(moved: u64) -> Self {
        Window {
            start: Instant::now(),
            start_moved: moved,
        }
    }
}

/// Copies both directions between `a` and `b` until both have ended (each half-close passed on)
/// or one fails, with a buffer of `buffer` bytes per direction. Bulk stretches of the flow run on
/// the bulk runtime; the call returns when the flow ends, wherever it ran.
///
/// Dropping the returned future stops the flow, also while it runs on the bulk runtime.
pub async fn relay<A, B>(a: A, b: B, buffer: usize) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    relay_and_return(a, b, buffer).await.0
}

/// [`relay`], giving the streams back at the end (e.g. to reset one when the other failed).
/// When the bulk task itself is lost (it panicked), the streams are lost with it: the error
/// says so and the streams are `None`.
pub async fn relay_and_return<A, B>(a: A, b: B, buffer: usize) -> (io::Result<()>, Option<(A, B)>)
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut relay = Relay::new(a, b, buffer);
    let flow = NEXT_FLOW.fetch_add(1, Ordering::Relaxed);
    loop {
        match interactive_phase(&mut relay, flow).await {
            Phase::Ended(result) => return (result, Some(relay.into_inner())),
            Phase::TurnedBulk | Phase::TurnedQuiet | Phase::Reclass(_) => {}
        }
        tracing::trace!(moved = relay.moved(), "flow turned bulk");
        let watch = Arc::new(Watch::default());
        let mut niced_until: Option<Instant> = None;
        let mut class = wanted_class(flow);
        loop {
            let Some(bulk) = bulk_runtime(class) else {
                // No bulk runtime (threads could not be made): the flow stays where it is.
                let result = (&mut relay).await;
                return (result, Some(relay.into_inner()));
            };
            let bulk_watch = watch.clone();
            let task = AbortOnDrop(bulk.spawn(async move {
                let phase = bulk_phase(&mut relay, flow, class, niced_until, &bulk_watch).await;
                (relay, phase)
            }));
            let joined = match class {
                Class::Yielding => task.join_watching(&watch).await,
                Class::Niced => task.join().await,
            };
            let (back, phase) = match joined {
                Ok(done) => done,
                Err(lost) => return (Err(lost), None),
            };
            relay = back;
            match phase {
                Phase::Ended(result) => return (result, Some(relay.into_inner())),
                Phase::Reclass(next) => {
                    if watch.starved.swap(false, Ordering::Relaxed) {
                        tracing::trace!("a yielding bulk flow is starved, niced for a while");
                        niced_until = Some(Instant::now() + NICED_HOLD);
                    }
                    class = next;
                }
                Phase::TurnedQuiet | Phase::TurnedBulk => {
                    tracing::trace!(moved = relay.moved(), "flow turned interactive");
                    break;
                }
            }
        }
    }
}

async fn interactive_phase<A, B>(relay: &mut Relay<A, B>, flow: u64) -> Phase
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut window = Window::new(relay.moved());
    poll_fn(|cx| {
        let before = relay.moved();
        let polled = relay.poll_relay(cx);
        if relay.moved() != before {
            note_interactive_bytes(flow);
        }
        if let Poll::Ready(result) = polled {
            return Poll::Ready(Phase::Ended(result));
        }
        if relay.moved() - window.start_moved >= BULK_BYTES {
            // Invariant: the flow leaves this runtime only between two polls, with its buffers
            // (the relay is Pending here, so every byte read is either written or buffered).
            return Poll::Ready(Phase::TurnedBulk);
        }
        if window.start.elapsed() >= BULK_WINDOW {
            window = Window::new(relay.moved());
        }
        Poll::Pending
    })
    .await
}

/// What the caller's runtime sees of a flow on the yielding threads.
#[derive(Default)]
struct Watch {
    /// The flow's bytes so far, as of its last poll.
    moved: AtomicU64,
    /// Set by the caller when the flow made too little progress; read by the flow.
    starved: AtomicBool,
}

async fn bulk_phase<A, B>(
    relay: &mut Relay<A, B>,
    flow: u64,
    class: Class,
    niced_until: Option<Instant>,
    watch: &Watch,
) -> Phase
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut window = Window::new(relay.moved());
    poll_fn(|cx| {
        // Invariant: as for turning bulk, the flow changes threads only between two polls.
        // Invariant: yielding only while another flow is interactive and this one progresses
        // (a starved flow, or one held niced after starving, runs niced).
        let held_niced = niced_until.is_some_and(|t| Instant::now() < t);
        let wanted = if held_niced || watch.starved.load(Ordering::Relaxed) {
            Class::Niced
        } else {
            wanted_class(flow)
        };
        if wanted != class {
            return Poll::Ready(Phase::Reclass(wanted));
        }
        // Checked before moving anything: the request that woke a flow which went quiet is
        // moved on the interactive runtime.
        if window.start.elapsed() >= QUIET_WINDOW {
            if relay.moved() - window.start_moved < QUIET_BYTES {
                return Poll::Ready(Phase::TurnedQuiet);
            }
            window = Window::new(relay.moved());
        }
        let polled = relay.poll_relay(cx);
        watch.moved.store(relay.moved(), Ordering::Relaxed);
        match polled {
            Poll::Ready(result) => Poll::Ready(Phase::Ended(result)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Aborts the bulk task when the flow's caller goes away.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> io::Result<T> {
        (&mut self.0).await.map_err(io::Error::other)
    }

    /// [`Self::join`], marking the flow starved whenever it moved less than
    /// [`STARVED_BYTES`] in a [`STARVED_CHECK`].
    async fn join_watching(mut self, watch: &Watch) -> io::Result<T> {
        let mut check = tokio::time::interval(STARVED_CHECK);
        check.tick().await;
        let mut last = watch.moved.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                done = &mut self.0 => return done.map_err(io::Error::other),
                _ = check.tick() => {
                    let moved = watch.moved.load(Ordering::Relaxed);
                    if moved.saturating_sub(last) < STARVED_BYTES {
                        watch.starved.store(true, Ordering::Relaxed);
                    }
                    last = moved;
                }
            }
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The process's bulk runtime of `class`, made on first use; `None` if its threads could not
/// be made.
fn bulk_runtime(class: Class) -> Option<&'static Runtime> {
    static NICED: OnceLock<Option<Runtime>> = OnceLock::new();
    static YIELDING: OnceLock<Option<Runtime>> = OnceLock::new();
    let (cell, name, start): (_, _, fn()) = match class {
        Class::Niced => (&NICED, "relay-bulk", start_niced_thread),
        Class::Yielding => (&YIELDING, "relay-idle", start_yielding_thread),
    };
    cell.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .on_thread_start(start)
            .enable_all()
            .build()
            .inspect_err(|e| tracing::debug!("no bulk runtime, flows keep their runtime: {e}"))
            .ok()
    })
    .as_ref()
}

/// Raises this thread's nice value to [`BULK_NICE`] (Linux schedules threads, so this does not
/// touch the process's other threads). Raising is always allowed; a failure only costs the
/// priority.
fn start_niced_thread() {
    crate::follow::mark_bulk_thread(1);
    lower_nice();
}

fn lower_nice() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority on our own thread id; no memory is passed.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BULK_NICE) };
    if r != 0 {
        tracing::debug!(
            "bulk relay thread keeps its priority: {}",
            io::Error::last_os_error()
        );
    }
}

/// Puts this thread in `SCHED_IDLE` (always allowed for a thread's own policy); on failure the
/// thread is niced instead.
fn start_yielding_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: our own thread (pid 0), a valid sched_param.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r != 0 {
        tracing::debug!(
            "idle relay thread is niced instead: {}",
            io::Error::last_os_error()
        );
        lower_nice();
    }
    crate::follow::mark_bulk_thread(2);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The tests that start flows share the process's record of interactive flows.
    static FLOWS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// CPU time (ns) of this process's threads whose name starts with `name_prefix`, and
    /// their scheduling policies.
    fn threads(name_prefix: &str) -> (u64, Vec<i32>) {
        let (mut ns, mut policies) = (0, Vec::new());
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with(name_prefix) {
                continue;
            }
            let sched = std::fs::read_to_string(task.path().join("schedstat")).unwrap();
            ns += sched
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap();
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            // Field 41 (policy), counted after the parenthesised command name.
            let after = stat.rsplit_once(')').unwrap().1;
            policies.push(after.split_whitespace().nth(38).unwrap().parse().unwrap());
        }
        (ns, policies)
    }

    async fn send(
        client: &mut tokio::io::DuplexStream,
        server: &mut tokio::io::DuplexStream,
        n: usize,
    ) {
        let chunk = vec![5u8; 64 * 1024];
        let (mut sent, mut got) = (0, 0);
        let mut buf = vec![0u8; 64 * 1024];
        while got < n {
            tokio::select! {
                r = client.write_all(&chunk), if sent < n => { r.unwrap(); sent += chunk.len(); }
                r = server.read(&mut buf) => { got += r.unwrap(); }
            }
        }
    }

    /// An interactive flow through `relay`: a one-byte request and its answer every 2 ms.
    struct Requests {
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        pinger: tokio::task::JoinHandle<()>,
        flow: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl Requests {
        fn start() -> Requests {
            let (mut ping, a) = tokio::io::duplex(4096);
            let (b, mut pong) = tokio::io::duplex(4096);
            let flow = tokio::spawn(relay(a, b, 4096));
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stopped = stop.clone();
            let pinger = tokio::spawn(async move {
                let mut byte = [0u8; 1];
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    ping.write_all(b"?").await.unwrap();
                    pong.read_exact(&mut byte).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                // Dropping both ends ends the flow.
            });
            Requests { stop, pinger, flow }
        }

        /// Stops the requests and waits until their flow has ended.
        async fn stop(self) {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            self.pinger.await.unwrap();
            self.flow.await.unwrap().ok();
        }
    }

    /// While another flow of the process moves requests, a bulk flow runs on the `SCHED_IDLE`
    /// threads; once those requests stop, it goes back to the niced ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bulk_flow_yields_completely_only_while_another_flow_is_interactive() {
        let _flows = FLOWS.lock().await;
        let requests = Requests::start();
        let (mut client, a) = tokio::io::duplex(256 * 1024);
        let (b, mut server) = tokio::io::duplex(256 * 1024);
        let download = tokio::spawn(relay(a, b, 64 * 1024));

        send(&mut client, &mut server, 64 << 20).await;
        let (idle_ns, idle_policies) = threads("relay-idle");
        assert!(
            idle_ns > 0,
            "the download ran on the idle threads beside the requests"
        );
        assert!(
            !idle_policies.is_empty() && idle_policies.iter().all(|p| *p == libc::SCHED_IDLE),
            "relay-idle threads are SCHED_IDLE: {idle_policies:?}"
        );

        requests.stop().await;
        tokio::time::sleep(INTERACTIVE_RECENT + Duration::from_millis(100)).await;
        let (niced_before, _) = threads("relay-bulk");
        send(&mut client, &mut server, 64 << 20).await;
        let (niced_after, niced_policies) = threads("relay-bulk");
        assert!(
            niced_after > niced_before,
            "with no requests the download went back to the niced threads"
        );
        assert!(niced_policies.iter().all(|p| *p == libc::SCHED_OTHER));
        drop((client, server));
        download.await.unwrap().ok();
    }

    /// A flow on the yielding threads that makes less progress than [`STARVED_BYTES`] per
    /// [`STARVED_CHECK`] (as `SCHED_IDLE` does on a machine busy with other work; here a paced
    /// sender stands in for the busy CPU, which a test cannot make reliably) runs on the niced
    /// threads instead, though another flow is interactive all along.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_starved_yielding_flow_moves_to_the_niced_threads() {
        let _flows = FLOWS.lock().await;
        let requests = Requests::start();
        let (mut client, a) = tokio::io::duplex(256 * 1024);
        let (b, mut server) = tokio::io::duplex(256 * 1024);
        let download = tokio::spawn(relay(a, b, 64 * 1024));
        // Bulk at once, on the yielding threads (the pinger is active).
        send(&mut client, &mut server, 8 << 20).await;
        let (niced_before, _) = threads("relay-bulk");
        // Then ~5 MiB/s: bulk still, but below the starvation line.
        for _ in 0..12 {
            send(&mut client, &mut server, 512 * 1024).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (niced_after, _) = threads("relay-bulk");
        assert!(
            niced_after > niced_before,
            "the starved flow ran on the niced threads ({niced_before} → {niced_after} ns)"
        );
        requests.stop().await;
        drop((client, server));
        download.await.unwrap().ok();
    }

    fn nice_of_thread(name_prefix: &str) -> Option<i32> {
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.starts_with(name_prefix) {
                let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                // Field 19 (nice), counted after the parenthesised command name.
                let after = stat.rsplit_once(')')?.1;
                return after.split_whitespace().nth(16)?.parse().ok();
            }
        }
        None
    }

    /// A flow that moves a few megabytes turns bulk (runs on the niced threads) and still
    /// delivers every byte in order, then a small exchange after it works again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bulk_flow_moves_to_the_niced_runtime_without_losing_bytes() {
        let _flows = FLOWS.lock().await;
        let (mut client, a) = tokio::io::duplex(64 * 1024);
        let (b, mut server) = tokio::io::duplex(64 * 1024);
        let flow = tokio::spawn(relay(a, b, 16 * 1024));
        let total = 8 * 1024 * 1024usize;
        let sender = tokio::spawn(async move {
            let chunk: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
            let mut sent = 0;
            while sent < total {
                client.write_all(&chunk).await.unwrap();
                sent += chunk.len();
            }
            client
        });
        let mut got = vec![0u8; total];
        server.read_exact(&mut got).await.unwrap();
        for (i, byte) in got.iter().enumerate() {
            assert_eq!(*byte, ((i % 4096) as u32 % 253) as u8, "byte {i}");
        }
        assert_eq!(
            nice_of_thread("relay-bulk"),
            Some(BULK_NICE),
            "the bulk runtime exists and its threads are niced"
        );
        let mut client = sender.await.unwrap();
        // Quiet for longer than the quiet window, then a request and its answer.
        tokio::time::sleep(QUIET_WINDOW + Duration::from_millis(100)).await;
        client.write_all(b"ping").await.unwrap();
        let mut ping = [0u8; 4];
        server.read_exact(&mut ping).await.unwrap();
        server.write_all(b"pong").await.unwrap();
        let mut pong = [0u8; 4];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!((&ping, &pong), (b"ping", b"pong"));
        drop(client);
        drop(server);
        flow.await.unwrap().ok();
    }

    /// Dropping the caller's future stops a flow that runs on the bulk runtime: its streams are
    /// dropped, which the peers see as EOF.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_relay_stops_its_bulk_task() {
        let _flows = FLOWS.lock().await;
        let (mut client, a) = tokio::io::duplex(64 * 1024);
        let (b, mut server) = tokio::io::duplex(64 * 1024);
        let flow = tokio::spawn(relay(a, b, 16 * 1024));
        let data = vec![7u8; 2 * 1024 * 1024];
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&data).await;
            client
        });
        let mut got = vec![0u8; 2 * 1024 * 1024];
        server.read_exact(&mut got).await.unwrap();
        let _client = writer.await.unwrap();
        flow.abort();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), server.read_to_end(&mut rest))
            .await
            .expect("the aborted flow dropped its streams")
            .unwrap();
        assert_eq!(n, 0);
    }
}
