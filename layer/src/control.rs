//! The process's control channel to the session (`MIRRORD_PROXY_ADDR`): opened on first use,
//! shared by every thread of the process, several requests in flight at once.
//!
//! A request takes an id and a slot in the waiting table, writes its frame (under the writer
//! lock, for one frame) and waits on a condition variable; one reader thread per channel reads
//! the answers and fills the slots by id. So a lookup stuck in the cluster holds up no other
//! thread, and the session still sees one channel, hence one process.
//!
//! Lock order: [`CHANNEL`] → a channel's writer → its waiting table. None is held across a
//! wait for an answer.

use crate::detour::{layer_debug, real, Guard};
use crate::state::{complain, state};
use mirrord_protocol::codec::{read_frame, write_frame};
use mirrord_protocol::layer::{
    LayerControlRequest, LayerControlResponse, LayerHello, LayerRequest, ServerHello,
    ServerResponse, MAX_CONTROL_IN_FLIGHT,
};
use mirrord_protocol::PROTOCOL_VERSION;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest the layer waits for one answer (and for a free slot before it). The session answers
/// every request well within it (a lookup gives up after a few seconds), so hitting it means the
/// session is wedged: the program gets an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the session may take to welcome a new channel.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Channel {
    /// Written one whole frame at a time.
    writer: Mutex<UnixStream>,
    waiting: Mutex<Waiting>,
    /// Signalled when a slot is filled or freed, or the channel closes.
    changed: Condvar,
    pub data_addrs: Vec<SocketAddr>,
    /// The descriptors of the writer and of the reader's clone, for a fork child to close
    /// without touching any lock a parent thread may have held at the fork.
    fds: [libc::c_int; 2],
}

#[derive(Default)]
struct Waiting {
    next_id: u64,
    /// Requests in flight; `Some` once answered.
    slots: HashMap<u64, Option<ServerResponse>>,
    /// The connection is gone: every waiter fails, the next request opens a new channel.
    closed: bool,
}

/// The current channel, if open.
static CHANNEL: Mutex<Option<Arc<Channel>>> = Mutex::new(None);

#[derive(Debug)]
pub enum ControlError {
    /// The session is unreachable or refused us; the program must get an error, not a hang.
    Unavailable(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Unavailable(s) => f.write_str(s),
        }
    }
}

/// Poison carries no meaning for these locks: every critical section leaves the data
/// consistent (a panic inside one is caught at the hook boundary), so a poisoned lock is used
/// as it is.
fn relock<T>(r: std::sync::LockResult<MutexGuard<'_, T>>) -> MutexGuard<'_, T> {
    r.unwrap_or_else(|p| p.into_inner())
}

/// Waits on `cv` for at most `left`, with [`relock`]'s view of poison.
fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>, left: Duration) -> MutexGuard<'a, T> {
    match cv.wait_timeout(g, left) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    }
}

/// Locks the channel slot (the fork hook holds it across `fork`).
pub fn lock() -> MutexGuard<'static, Option<Arc<Channel>>> {
    relock(CHANNEL.lock())
}

/// In a fork child, with [`lock`] held across the fork: the parent's channel is not ours.
/// Closes the child's copies of its descriptors and forgets it without running any destructor
/// (its reader thread and waiters exist only in the parent, so their references never drop).
pub fn forget_in_child(slot: &mut Option<Arc<Channel>>) {
    if let Some(ch) = slot.take() {
        for fd in ch.fds {
            // SAFETY: closing the child's copies of the channel's sockets, which nothing in the
            // child uses any more.
            unsafe { real::close(fd) };
        }
        std::mem::forget(ch);
    }
}

fn open() -> Result<(Arc<Channel>, UnixStream), ControlError> {
    let st = state().ok_or_else(|| ControlError::Unavailable("no session".into()))?;
    let stream = UnixStream::connect(&st.proxy_path).map_err(|e| {
        ControlError::Unavailable(format!(
            "cannot reach the mirrord session at {}: {e}",
            st.proxy_path.display()
        ))
    })?;
    let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
    let executable = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let hello = LayerHello::Control {
        version: PROTOCOL_VERSION,
        token: st.token.clone(),
        pid: std::process::id(),
        executable,
    };
    let mut s = &stream;
    write_frame(&mut s, &hello)
        .map_err(|e| ControlError::Unavailable(format!("session hello: {e}")))?;
    let data_addrs = match read_frame::<ServerHello, _>(&mut s) {
        Ok(ServerHello::Welcome { data_addrs, .. }) => data_addrs,
        Ok(ServerHello::Refused { reason }) => {
            return Err(ControlError::Unavailable(format!(
                "the mirrord session refused this process: {reason}"
            )))
        }
        Err(e) => return Err(ControlError::Unavailable(format!("session hello: {e}"))),
    };
    // The reader waits for answers as long as the process lives.
    let _ = stream.set_read_timeout(None);
    let reader = stream
        .try_clone()
        .map_err(|e| ControlError::Unavailable(format!("control channel: {e}")))?;
    let fds = [stream.as_raw_fd(), reader.as_raw_fd()];
    let ch = Arc::new(Channel {
        fds,
        writer: Mutex::new(stream),
        waiting: Mutex::new(Waiting::default()),
        changed: Condvar::new(),
        data_addrs,
    });
    Ok((ch, reader))
}

/// The open channel, opening it (and starting its reader) if needed.
fn current() -> Result<Arc<Channel>, ControlError> {
    let mut slot = lock();
    if let Some(ch) = slot.as_ref() {
        return Ok(ch.clone());
    }
    // Diagnostics are written after the lock is released: stderr may block.
    let opened = open().and_then(|(ch, reader)| {
        let for_reader = ch.clone();
        crate::detour::spawn_without_signals("mirrord-control", move || {
            read_answers(for_reader, reader)
        })
        .map_err(|e| {
            ControlError::Unavailable(format!("cannot start the control channel's reader: {e}"))
        })?;
        Ok(ch)
    });
    if let Ok(ch) = &opened {
        *slot = Some(ch.clone());
    }
    drop(slot);
    match &opened {
        Ok(ch) => layer_debug!("joined the session; data listeners {:?}", ch.data_addrs),
        Err(e) => complain(&e.to_string()),
    }
    opened
}

/// The reader thread: fills slots by id until the connection ends, then fails every waiter and
/// retires the channel so the next request reconnects (the session may have been restarted).
fn read_answers(ch: Arc<Channel>, mut reader: UnixStream) {
    // Everything this thread does is the layer's own work.
    let _guard = Guard::enter();
    let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
        match read_frame::<LayerControlResponse, _>(&mut reader) {
            Ok(LayerControlResponse { id, response }) => {
                let mut w = relock(ch.waiting.lock());
                // A slot whose waiter gave up is gone: its late answer is dropped.
                if let Some(slot) = w.slots.get_mut(&id) {
                    *slot = Some(response);
                    ch.changed.notify_all();
                }
            }
            Err(e) => break e.to_string(),
        }
    }))
    .unwrap_or_else(|_| "internal error".into());
    layer_debug!("control channel closed: {ended}");
    retire(&ch);
}

/// Makes `ch` no longer the current channel (if it still is) and wakes its waiters.
fn retire(ch: &Arc<Channel>) {
    {
        let mut slot = lock();
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, ch)) {
            *slot = None;
        }
    }
    let _ = relock(ch.writer.lock()).shutdown(std::net::Shutdown::Both);
    relock(ch.waiting.lock()).closed = true;
    ch.changed.notify_all();
}

/// Sends one request and waits for its answer; other threads' requests run meanwhile.
pub fn request(req: &LayerRequest) -> Result<ServerResponse, ControlError> {
    let ch = current()?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let lost = |what: &str| {
        let msg = format!("lost the mirrord session: {what}");
        complain(&msg);
        ControlError::Unavailable(msg)
    };
    // Bounded: at MAX_CONTROL_IN_FLIGHT this thread waits for a slot, within its deadline.
    let id = {
        let mut w = relock(ch.waiting.lock());
        loop {
            if w.closed {
                drop(w);
                return Err(lost("the control channel closed"));
            }
            if w.slots.len() < MAX_CONTROL_IN_FLIGHT {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(w);
                return Err(lost("too many requests waiting for the session"));
            }
            w = wait(&ch.changed, w, left);
        }
        let id = w.next_id;
        w.next_id += 1;
        w.slots.insert(id, None);
        id
    };
    let written = {
        let s = relock(ch.writer.lock());
        write_frame(
            &mut &*s,
            &LayerControlRequest {
                id,
                request: req.clone(),
            },
        )
    };
    if let Err(e) = written {
        relock(ch.waiting.lock()).slots.remove(&id);
        retire(&ch);
        return Err(lost(&e.to_string()));
    }
    let mut w = relock(ch.waiting.lock());
    loop {
        if let Some(Some(_)) = w.slots.get(&id) {
            let answer = w.slots.remove(&id).flatten();
            ch.changed.notify_all();
            // Checked just above: the slot holds an answer.
            return Ok(answer.expect("answered slot"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if w.closed || left.is_zero() {
            w.slots.remove(&id);
            ch.changed.notify_all();
            drop(w);
            return Err(lost(if left.is_zero() {
                "no answer in time"
            } else {
                "the control channel closed"
            }));
        }
        w = wait(&ch.changed, w, left);
    }
}

/// Loopback addresses of the session's data listeners (joins the session if needed).
pub fn data_addrs() -> Result<Vec<SocketAddr>, ControlError> {
    Ok(current()?.data_addrs.clone())
}
