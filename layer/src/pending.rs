//! Non-blocking connects whose pod-side outcome is still on its way.
//!
//! `connect` on a non-blocking socket connects it to the session's loopback data listener
//! (which completes at once), writes the hello and returns `EINPROGRESS`; the session's reply
//! frame, the pod-side outcome, arrives later on the same socket. Until then the socket must
//! not look writable (it is, to loopback), or the program would take the connect for done:
//!
//! - the `epoll_ctl` hook registers a pending socket without its read/write interest and
//!   remembers what the program asked for;
//! - one watcher thread (started on first use, again in a fork child) waits for the reply
//!   frames of all pending sockets, reads exactly the frame (never a byte more: what follows is
//!   the program's), records the outcome, disconnects the socket on failure, and restores the
//!   program's registrations with `EPOLL_CTL_MOD`, which re-evaluates readiness (edge-triggered
//!   registrations included);
//! - `getsockopt(SO_ERROR)` on a pending socket (a program that waited with something the layer
//!   does not see) waits for the outcome, bounded.
//!
//! Lock order: the socket table → an entry → [`PENDING`] → [`WATCHER`] → [`SETTLED`]; no two are held
//! together except by `fork`. `PENDING` is held across `epoll_ctl` calls (non-blocking), so a
//! registration never slips between the settling of a socket and the restoring of its interest.

use crate::detour::{errno, layer_debug, real, Guard};
use crate::sockets::{lock_entry, Entry, Managed, TcpState};
use libc::{c_int, epoll_event};
use mirrord_protocol::codec::{decode_payload, frame_len, HEADER_LEN};
use mirrord_protocol::layer::DataReply;
use mirrord_protocol::net::ConnectReply;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The session answers a connect within its own connect timeout (20 s); this only guards
/// against a wedged session.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Interest the program's registration loses while the socket is pending: readiness for
/// reading would come from the reply frame, readiness for writing from the loopback hop.
const HIDDEN: u32 = (libc::EPOLLIN
    | libc::EPOLLOUT
    | libc::EPOLLRDNORM
    | libc::EPOLLWRNORM
    | libc::EPOLLRDBAND
    | libc::EPOLLWRBAND
    | libc::EPOLLPRI
    | libc::EPOLLRDHUP) as u32;

/// One epoll registration the program made for a pending socket.
pub struct Registration {
    epfd: c_int,
    events: u32,
    data: u64,
}

pub struct Pending {
    entry: Entry,
    registrations: Vec<Registration>,
    /// When the connect fails with `ETIMEDOUT` if no outcome arrived (the session answers
    /// well before; this bounds a wedged one).
    deadline: Instant,
}

static PENDING: Mutex<Option<HashMap<c_int, Pending>>> = Mutex::new(None);
/// How many sockets are pending: lets `epoll_ctl` skip every lock in the common case.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// The watcher's epoll instance (the thread lives as long as the process).
static WATCHER: Mutex<Option<c_int>> = Mutex::new(None);

/// Counts settled sockets; [`settle_blocking`] waits for it to move while the watcher may be
/// the one reading the reply.
static SETTLED: Mutex<u64> = Mutex::new(0);
static SETTLED_CV: std::sync::Condvar = std::sync::Condvar::new();

fn relock<T>(r: std::sync::LockResult<MutexGuard<'_, T>>) -> MutexGuard<'_, T> {
    r.unwrap_or_else(|p| p.into_inner())
}

/// What the fork hook holds across `fork`.
pub type ForkLocks = (
    MutexGuard<'static, Option<HashMap<c_int, Pending>>>,
    MutexGuard<'static, Option<c_int>>,
    MutexGuard<'static, u64>,
);

pub fn fork_locks() -> ForkLocks {
    (
        relock(PENDING.lock()),
        relock(WATCHER.lock()),
        relock(SETTLED.lock()),
    )
}

/// In a fork child, with [`fork_locks`] held across the fork: the parent's watcher settles the
/// parent's sockets (their reply frames arrive on descriptions both processes share); the child
/// starts its own watcher when it connects.
pub fn reset_in_child(locks: &mut ForkLocks) {
    if let Some(epfd) = locks.1.take() {
        // SAFETY: the child's copy of the watcher's epoll descriptor.
        unsafe { real::close(epfd) };
    }
    *locks.0 = None;
    COUNT.store(0, Ordering::Relaxed);
}

/// Whether any socket is pending (cheap; for the `epoll_ctl` fast path).
pub fn any() -> bool {
    COUNT.load(Ordering::Relaxed) > 0
}

/// The watcher's epoll descriptor, starting the watcher if needed.
fn watcher() -> Result<c_int, i32> {
    let mut w = relock(WATCHER.lock());
    if let Some(epfd) = *w {
        return Ok(epfd);
    }
    // SAFETY: plain syscall.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(errno());
    }
    let spawned = crate::detour::spawn_without_signals("mirrord-connect", move || watch(epfd));
    if spawned.is_err() {
        // SAFETY: our own descriptor, unused.
        unsafe { real::close(epfd) };
        return Err(libc::EAGAIN);
    }
    *w = Some(epfd);
    Ok(epfd)
}

/// Registers `fd` (just connected to the data listener, hello sent) as pending.
pub fn add(fd: c_int, entry: Entry) -> Result<(), i32> {
    let epfd = watcher()?;
    {
        let mut p = relock(PENDING.lock());
        let table = p.get_or_insert_with(HashMap::new);
        if table
            .insert(
                fd,
                Pending {
                    entry,
                    registrations: Vec::new(),
                    deadline: Instant::now() + REPLY_TIMEOUT,
                },
            )
            .is_none()
        {
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut ev = epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
        u64: fd as u64,
    };
    // SAFETY: registering the program's socket with the watcher's own epoll instance.
    let r = unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    if r != 0 {
        let e = errno();
        forget(fd);
        return Err(e);
    }
    Ok(())
}

/// The program closed `fd` (or its number was reused): nothing to settle or restore.
pub fn forget(fd: c_int) {
    if !any() {
        return;
    }
    if relock(PENDING.lock())
        .as_mut()
        .and_then(|t| t.remove(&fd))
        .is_some()
    {
        COUNT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The watcher thread.
fn watch(epfd: c_int) {
    // Everything this thread does is the layer's own work.
    let _guard = Guard::enter();
    let result = std::panic::catch_unwind(|| {
        let mut events: [epoll_event; 32] = [epoll_event { events: 0, u64: 0 }; 32];
        loop {
            let wait_ms = expire_overdue()
                .map_or(-1, |d| d.as_millis().clamp(1, c_int::MAX as u128) as c_int);
            // SAFETY: waiting on our own epoll instance with a buffer of 32 events.
            let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), 32, wait_ms) };
            if n < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                crate::state::complain(&format!(
                    "the connect watcher stopped (errno {}); pending connects now settle when \
                     the program asks for their outcome",
                    errno()
                ));
                return;
            }
            for ev in &events[..n as usize] {
                let fd = ev.u64 as c_int;
                if !settle(fd) {
                    continue;
                }
                let mut dummy = epoll_event { events: 0, u64: 0 };
                // SAFETY: removing the (possibly already closed) socket from our epoll set.
                unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, &mut dummy) };
            }
        }
    });
    if result.is_err() {
        crate::state::complain("the connect watcher stopped after an internal error");
    }
}

/// Fails the pending connects whose deadline passed; returns the time to the next deadline.
fn expire_overdue() -> Option<Duration> {
    let now = Instant::now();
    let (overdue, next): (Vec<(c_int, Entry)>, Option<Instant>) = {
        let p = relock(PENDING.lock());
        let t = p.as_ref()?;
        let overdue = t
            .iter()
            .filter(|(_, x)| x.deadline <= now)
            .map(|(fd, x)| (*fd, x.entry.clone()))
            .collect();
        let next = t.values().map(|x| x.deadline).filter(|d| *d > now).min();
        (overdue, next)
    };
    for (fd, entry) in overdue {
        time_out(fd, &entry);
    }
    next.map(|d| d.saturating_duration_since(now))
}

/// The outcome never came: the connect fails with `ETIMEDOUT`.
fn time_out(fd: c_int, entry: &Entry) {
    {
        let mut m = lock_entry(entry);
        if let Managed::Tcp {
            state: s @ TcpState::Connecting,
            ..
        } = &mut *m
        {
            *s = TcpState::Failed(libc::ETIMEDOUT);
            // SAFETY: the entry's socket.
            unsafe { disconnect(fd) };
        }
    }
    finish(fd, entry);
}

/// The reply frame, if all of it has arrived; never consumes a partial frame or a byte beyond.
enum Reply {
    NotYet,
    Outcome(Result<ConnectReply, i32>),
}

/// # Safety
/// `fd` is a pending socket.
unsafe fn try_read_reply(fd: c_int) -> Reply {
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    let mut header = [0u8; HEADER_LEN];
    let n = libc::recv(fd, header.as_mut_ptr().cast(), HEADER_LEN, flags);
    if n < 0 {
        return match errno() {
            libc::EAGAIN | libc::EINTR => Reply::NotYet,
            _ => Reply::Outcome(Err(libc::ECONNREFUSED)),
        };
    }
    if n == 0 {
        return Reply::Outcome(Err(libc::ECONNREFUSED));
    }
    if (n as usize) < HEADER_LEN {
        return Reply::NotYet;
    }
    let Ok(len) = frame_len(header) else {
        return Reply::Outcome(Err(libc::EPROTO));
    };
    let mut frame = vec![0u8; HEADER_LEN + len];
    let n = libc::recv(fd, frame.as_mut_ptr().cast(), frame.len(), flags);
    if n < 0 || (n as usize) < frame.len() {
        return Reply::NotYet;
    }
    // Exactly the frame, which is all there (just peeked).
    let n = libc::recv(
        fd,
        frame.as_mut_ptr().cast(),
        frame.len(),
        libc::MSG_DONTWAIT,
    );
    if n < 0 || (n as usize) != frame.len() {
        return Reply::Outcome(Err(libc::EPROTO));
    }
    Reply::Outcome(match decode_payload::<DataReply>(&frame[HEADER_LEN..]) {
        Ok(DataReply::Connect(reply)) => Ok(reply),
        // The session refuses only a hello it cannot accept (version, token): the same answer
        // as the blocking path's, which says why on stderr.
        Ok(DataReply::Refused { .. }) => Err(libc::ECONNREFUSED),
        Err(_) => Err(libc::EPROTO),
    })
}

/// Records `outcome` in the entry (still `Connecting`, locked by the caller) and returns what
/// to log about it once the entry is unlocked (stderr may block).
///
/// # Safety
/// `fd` is the entry's socket.
#[must_use]
pub unsafe fn apply(fd: c_int, m: &mut Managed, outcome: Result<ConnectReply, i32>) -> String {
    let Managed::Tcp { remote, state } = m else {
        return String::new();
    };
    let (next, note) = match outcome {
        Ok(ConnectReply::Connected { local, .. }) => (
            TcpState::Connected {
                local,
                reported: false,
            },
            format!("connect {remote}: through the pod (pod-side address {local})"),
        ),
        Ok(ConnectReply::Failed { errno: e }) | Err(e) => {
            disconnect(fd);
            (
                TcpState::Failed(e),
                format!("connect {remote}: failed in the pod, errno {e}"),
            )
        }
    };
    *state = next;
    note
}

/// Dissolves the association with the data listener, so the socket is unconnected again (and
/// a disconnected socket polls as "done").
///
/// # Safety
/// `fd` is a socket.
pub unsafe fn disconnect(fd: c_int) {
    let mut unspec: libc::sockaddr = std::mem::zeroed();
    unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    crate::marked::connect(
        fd,
        &unspec,
        std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
    );
    // Dissolving a connection leaves ECONNRESET pending on the socket, about a hop the program
    // never made: cleared, so the program sees only the error the layer reports.
    let mut err: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    real::getsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ERROR,
        (&mut err as *mut c_int).cast(),
        &mut len,
    );
}

/// Settles `fd` if its outcome has arrived (or it is no longer pending). Returns whether it is
/// settled; the first caller to see it settled restores the program's registrations.
pub fn settle(fd: c_int) -> bool {
    let Some(entry) = relock(PENDING.lock())
        .as_ref()
        .and_then(|t| t.get(&fd))
        .map(|p| p.entry.clone())
    else {
        return true;
    };
    let note = {
        let mut m = lock_entry(&entry);
        if matches!(
            &*m,
            Managed::Tcp {
                state: TcpState::Connecting,
                ..
            }
        ) {
            // SAFETY: `fd` is the pending socket of this entry (checked under PENDING above;
            // a close in between makes the reads fail harmlessly).
            match unsafe { try_read_reply(fd) } {
                Reply::NotYet => return false,
                Reply::Outcome(o) => Some(unsafe { apply(fd, &mut m, o) }),
            }
        } else {
            None
        }
    };
    finish(fd, &entry);
    if let Some(note) = note {
        layer_debug!("{note}");
    }
    true
}

/// Takes `fd` out of the pending set and gives the program its epoll interest back.
fn finish(fd: c_int, entry: &Entry) {
    let mut p = relock(PENDING.lock());
    let Some(table) = p.as_mut() else { return };
    if !table
        .get(&fd)
        .is_some_and(|x| std::sync::Arc::ptr_eq(&x.entry, entry))
    {
        return;
    }
    let Some(pending) = table.remove(&fd) else {
        return;
    };
    COUNT.fetch_sub(1, Ordering::Relaxed);
    *relock(SETTLED.lock()) += 1;
    SETTLED_CV.notify_all();
    for r in pending.registrations {
        let mut ev = epoll_event {
            events: r.events,
            u64: r.data,
        };
        // SAFETY: the program's own registration, as it made it; MOD re-evaluates readiness.
        unsafe { real::epoll_ctl(r.epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) };
    }
}

/// For a program that asks for the outcome before the watcher saw it: waits for it (bounded by
/// [`REPLY_TIMEOUT`], then the connect fails with `ETIMEDOUT`).
pub fn settle_blocking(fd: c_int, entry: &Entry) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let seen = *relock(SETTLED.lock());
        if settle(fd) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            time_out(fd, entry);
            return;
        }
        let slice = left.min(Duration::from_secs(1));
        if relock(WATCHER.lock()).is_some() {
            // The watcher may read the reply before this thread sees it: wait for it to say so.
            let g = relock(SETTLED.lock());
            if *g == seen {
                drop(SETTLED_CV.wait_timeout(g, slice));
            }
        } else {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polling one descriptor.
            unsafe { real::poll(&mut pfd, 1, slice.as_millis().max(1) as c_int) };
        }
    }
}

/// The `epoll_ctl` hook for a pending socket: registers it without the hidden interest and
/// remembers the program's. `None` if `fd` is not pending (the call goes to libc unchanged).
///
/// # Safety
/// Arguments as for `epoll_ctl(2)`.
pub unsafe fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut epoll_event,
) -> Option<c_int> {
    let mut p = relock(PENDING.lock());
    let pending = p.as_mut()?.get_mut(&fd)?;
    match op {
        libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD if !event.is_null() => {
            let wanted = std::ptr::read_unaligned(event);
            let mut stripped = epoll_event {
                events: wanted.events & !HIDDEN,
                u64: wanted.u64,
            };
            let r = real::epoll_ctl(epfd, op, fd, &mut stripped);
            if r == 0 {
                pending.registrations.retain(|x| x.epfd != epfd);
                pending.registrations.push(Registration {
                    epfd,
                    events: wanted.events,
                    data: wanted.u64,
                });
            }
            Some(r)
        }
        libc::EPOLL_CTL_DEL => {
            let r = real::epoll_ctl(epfd, op, fd, event);
            if r == 0 {
                pending.registrations.retain(|x| x.epfd != epfd);
            }
            Some(r)
        }
        _ => None,
    }
}

/// Pending sockets among a `poll`'s descriptors: (index, descriptor).
fn hidden_in(fds: &[libc::pollfd]) -> Vec<(usize, c_int)> {
    fds.iter()
        .enumerate()
        .filter(|(_, p)| p.fd >= 0)
        .filter(|(_, p)| {
            relock(PENDING.lock())
                .as_ref()
                .is_some_and(|t| t.contains_key(&p.fd))
        })
        // An outcome that already arrived is taken now.
        .filter(|(_, p)| !settle(p.fd))
        .map(|(i, p)| (i, p.fd))
        .collect()
}

/// Takes `fd` from the watcher (or gives it back) while a `poll` waits for its reply itself:
/// otherwise the watcher could read the reply and the poller, waiting for that very reply to
/// arrive, would never hear of it.
fn watcher_watches(fd: c_int, watch: bool) {
    let Some(epfd) = *relock(WATCHER.lock()) else {
        return;
    };
    let mut ev = epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
        u64: fd as u64,
    };
    let op = if watch {
        libc::EPOLL_CTL_ADD
    } else {
        libc::EPOLL_CTL_DEL
    };
    // SAFETY: the watcher's own epoll instance; errors (already there, already gone) are moot.
    unsafe { real::epoll_ctl(epfd, op, fd, &mut ev) };
}

/// Longest one wait inside a `poll` with pending sockets: bounds how late the poller notices a
/// reply read by someone else (another thread polling the same socket).
const POLL_SLICE: Duration = Duration::from_millis(100);

/// The `poll`/`ppoll` hook with pending sockets among `fds`: they show no readiness until their
/// outcome arrives (the poller waits for the reply itself and settles the socket), then their
/// real readiness. `None` when no descriptor is pending (the call goes to libc unchanged).
///
/// # Safety
/// Arguments as for `ppoll(2)`; `timeout` `None` waits forever.
pub unsafe fn poll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: Option<Duration>,
    sigmask: *const libc::sigset_t,
) -> Option<c_int> {
    if fds.is_null() || nfds == 0 {
        return None;
    }
    let user = std::slice::from_raw_parts_mut(fds, nfds as usize);
    let mut hidden = hidden_in(user);
    if hidden.is_empty() {
        return None;
    }
    for &(_, fd) in &hidden {
        watcher_watches(fd, false);
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let result = loop {
        let mut copy: Vec<libc::pollfd> = user.to_vec();
        for &(i, _) in &hidden {
            copy[i].events = libc::POLLIN;
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let slice = left.unwrap_or(POLL_SLICE).min(POLL_SLICE);
        let ts = libc::timespec {
            tv_sec: slice.as_secs() as libc::time_t,
            tv_nsec: slice.subsec_nanos() as libc::c_long,
        };
        let n = real::ppoll(copy.as_mut_ptr(), nfds, &ts, sigmask);
        if n < 0 {
            break -1;
        }
        let before = hidden.len();
        hidden.retain(|&(i, fd)| copy[i].revents == 0 || !settle(fd));
        // Also the ones whose reply someone else read.
        hidden.retain(|&(_, fd)| {
            relock(PENDING.lock())
                .as_ref()
                .is_some_and(|t| t.contains_key(&fd))
        });
        if hidden.len() != before {
            // Settled ones are polled again for their real readiness.
            continue;
        }
        for &(i, _) in &hidden {
            copy[i].revents = 0;
        }
        let ready = copy.iter().filter(|p| p.revents != 0).count();
        if ready > 0 || left.is_some_and(|l| l <= slice) {
            for (u, c) in user.iter_mut().zip(&copy) {
                u.revents = c.revents;
            }
            break ready as c_int;
        }
    };
    let e = errno();
    for &(_, fd) in &hidden {
        watcher_watches(fd, true);
    }
    crate::detour::set_errno(e);
    Some(result)
}

/// The `select` hook with pending sockets among the sets: [`poll`]'s rules, in `select`'s
/// terms (readable: in/hang-up/error; writable: out/error; exceptional: priority data).
/// `None` when no descriptor in the sets is pending.
///
/// # Safety
/// Arguments as for `select(2)`.
pub unsafe fn select(
    nfds: c_int,
    read: *mut libc::fd_set,
    write: *mut libc::fd_set,
    except: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> Option<c_int> {
    let isset = |set: *mut libc::fd_set, fd: c_int| !set.is_null() && libc::FD_ISSET(fd, set);
    let mut fds = Vec::new();
    for fd in 0..nfds.clamp(0, libc::FD_SETSIZE as c_int) {
        let mut events = 0;
        if isset(read, fd) {
            events |= libc::POLLIN;
        }
        if isset(write, fd) {
            events |= libc::POLLOUT;
        }
        if isset(except, fd) {
            events |= libc::POLLPRI;
        }
        if events != 0 {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
        }
    }
    let wait = (!timeout.is_null()).then(|| {
        Duration::from_secs((*timeout).tv_sec.max(0) as u64)
            + Duration::from_micros((*timeout).tv_usec.clamp(0, 999_999) as u64)
    });
    let started = Instant::now();
    let n = poll(
        fds.as_mut_ptr(),
        fds.len() as libc::nfds_t,
        wait,
        std::ptr::null(),
    )?;
    if n < 0 {
        return Some(n);
    }
    if fds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        crate::detour::set_errno(libc::EBADF);
        return Some(-1);
    }
    for set in [read, write, except] {
        if !set.is_null() {
            libc::FD_ZERO(set);
        }
    }
    let mut count = 0;
    for p in &fds {
        let marks = [
            (
                read,
                libc::POLLIN | libc::POLLHUP | libc::POLLERR,
                libc::POLLIN,
            ),
            (write, libc::POLLOUT | libc::POLLERR, libc::POLLOUT),
            (except, libc::POLLPRI, libc::POLLPRI),
        ];
        for (set, shows, asked) in marks {
            if p.events & asked != 0 && p.revents & shows != 0 {
                libc::FD_SET(p.fd, set);
                count += 1;
            }
        }
    }
    // Linux's select leaves the time not slept in `timeout`.
    if let Some(w) = wait {
        let left = w.saturating_sub(started.elapsed());
        (*timeout).tv_sec = left.as_secs() as libc::time_t;
        (*timeout).tv_usec = left.subsec_micros() as libc::suseconds_t;
    }
    Some(count)
}
