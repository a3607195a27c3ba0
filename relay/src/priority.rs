//! Which runtime a flow's bytes are moved on: the caller's while the flow is interactive, the
//! process-wide bulk runtime (threads at a lower priority) while it moves bulk data.

use std::future::poll_fn;
use std::io;
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

/// What ended a phase of a flow.
enum Phase {
    /// The flow has ended (both directions, or an error).
    Ended(io::Result<()>),
    /// The interactive flow started to move bulk data.
    TurnedBulk,
    /// The bulk flow went quiet.
    TurnedQuiet,
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
    loop {
        match interactive_phase(&mut relay).await {
            Phase::Ended(result) => return (result, Some(relay.into_inner())),
            Phase::TurnedBulk | Phase::TurnedQuiet => {}
        }
        let Some(bulk) = bulk_runtime() else {
            // No bulk runtime (threads could not be made): the flow stays where it is.
            let result = (&mut relay).await;
            return (result, Some(relay.into_inner()));
        };
        tracing::trace!(moved = relay.moved(), "flow turned bulk");
        let task = AbortOnDrop(bulk.spawn(async move {
            let phase = bulk_phase(&mut relay).await;
            (relay, phase)
        }));
        let (back, phase) = match task.join().await {
            Ok(done) => done,
            Err(lost) => return (Err(lost), None),
        };
        relay = back;
        match phase {
            Phase::Ended(result) => return (result, Some(relay.into_inner())),
            Phase::TurnedQuiet | Phase::TurnedBulk => {
                tracing::trace!(moved = relay.moved(), "flow turned interactive");
            }
        }
    }
}

async fn interactive_phase<A, B>(relay: &mut Relay<A, B>) -> Phase
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut window = Window::new(relay.moved());
    poll_fn(|cx| {
        if let Poll::Ready(result) = relay.poll_relay(cx) {
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

async fn bulk_phase<A, B>(relay: &mut Relay<A, B>) -> Phase
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut window = Window::new(relay.moved());
    poll_fn(|cx| {
        // Checked before moving anything: the request that woke a flow which went quiet is
        // moved on the interactive runtime.
        if window.start.elapsed() >= QUIET_WINDOW {
            if relay.moved() - window.start_moved < QUIET_BYTES {
                return Poll::Ready(Phase::TurnedQuiet);
            }
            window = Window::new(relay.moved());
        }
        match relay.poll_relay(cx) {
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
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The process's bulk runtime, made on first use; `None` if its threads could not be made.
fn bulk_runtime() -> Option<&'static Runtime> {
    static BULK: OnceLock<Option<Runtime>> = OnceLock::new();
    BULK.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("relay-bulk")
            .on_thread_start(lower_this_threads_priority)
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
fn lower_this_threads_priority() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
