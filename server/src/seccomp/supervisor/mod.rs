//! The session's side of the filter: one thread receives the program's watched calls and
//! answers each one. Quick answers (files, `getpeername`, calls left alone) come from that
//! thread; slow ones (a connect through the pod, a blocking receive) run on a worker thread, so
//! one never holds up another call. One file per kind of call: `files` (resolver files),
//! `outgoing` (connect and the routing decision), `udp` (relays, `sendto`/`recvfrom`),
//! `incoming` (`bind`/`listen`/`accept`), `peers` (`getpeername`, socket addresses).

mod files;
mod incoming;
mod outgoing;
mod peers;
mod udp;

use super::link::SessionLink;
use super::notify::{self, Notif};
use mirrord_protocol::codec::{decode_payload, encode, frame_len, HEADER_LEN};
use mirrord_protocol::config::{canonical_ip, NetworkConfig, Proto, Route};
use mirrord_protocol::layer::{DataReply, LayerHello, LayerRequest, ServerResponse};
use mirrord_protocol::net::{ConnectReply, UdpOpenReply};
use mirrord_protocol::PROTOCOL_VERSION;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a connect may wait for the pod's answer (as the layer's).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Slow calls (connects, first datagrams, blocking receives) handled on threads of their own at
/// once; beyond it the receiving thread handles a connect itself (the program's other calls then
/// wait: back-pressure, not unbounded threads) and lets a receive run unchanged.
const MAX_WORKERS: usize = 256;
/// Largest datagram the supervisor carries for a program (UDP's own limit).
const MAX_DATAGRAM: usize = 65_536;
/// Redirected sockets remembered for `getpeername` (oldest forgotten first).
const MAX_REDIRECTED: usize = 65_536;

/// The target's resolver files, served to every open of `/etc/resolv.conf` / `/etc/hosts`.
pub struct TargetFiles {
    pub resolv_conf: Vec<u8>,
    pub hosts: Vec<u8>,
}

pub struct Supervisor {
    pub link: SessionLink,
    /// The session, for the names its lookups gave addresses (outgoing filter name rules).
    pub shared: Arc<crate::proxy::ProxyShared>,
    pub network: NetworkConfig,
    pub files: Option<TargetFiles>,
    /// Sockets the supervisor connected through the session, by inode: (the address the
    /// program asked for, the loopback address the socket really has as its peer).
    redirected: Mutex<Redirected>,
    /// Listening sockets the supervisor bound to loopback, by inode: (the pod's port, the
    /// loopback address the session delivers that port's connections to).
    listeners: Mutex<HashMap<u64, (u16, SocketAddr)>>,
    /// UDP sockets that sent to cluster addresses without connecting, by inode: (destination,
    /// the session's relay for it).
    udp: Mutex<HashMap<u64, Vec<(SocketAddr, SocketAddr)>>>,
    workers: AtomicUsize,
    /// Notifications received, per kind of call (see [`CALL_KINDS`]).
    stopped: [AtomicU64; CALL_KINDS.len()],
}

/// The kinds of watched calls, as [`Supervisor::stopped_calls`] names them.
const CALL_KINDS: [&str; 8] = [
    "connect",
    "getpeername",
    "open",
    "bind",
    "listen",
    "accept",
    "sendto",
    "recvfrom",
];

/// What to do with a slow call when every worker thread is busy.
#[derive(Clone, Copy)]
enum Overflow {
    /// Handle it on the receiving thread (back-pressure).
    Inline,
    /// Let the kernel run it unchanged (a call that may wait indefinitely must never hold the
    /// receiving thread).
    Proceed,
}

#[derive(Default)]
struct Redirected {
    by_inode: HashMap<u64, (SocketAddr, SocketAddr)>,
    order: VecDeque<u64>,
}

/// What to do with a connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Leave,
    Tcp,
    Udp { dns: bool },
}

impl Supervisor {
    pub fn new(
        link: SessionLink,
        shared: Arc<crate::proxy::ProxyShared>,
        network: NetworkConfig,
        files: Option<TargetFiles>,
    ) -> Self {
        Supervisor {
            link,
            shared,
            network,
            files,
            redirected: Mutex::default(),
            listeners: Mutex::default(),
            udp: Mutex::default(),
            workers: AtomicUsize::new(0),
            stopped: Default::default(),
        }
    }

    /// How many calls of each kind stopped at the supervisor so far, as `kind=N` pairs
    /// (`connect=2 getpeername=1 open=5 ...`, every kind always present).
    pub fn stopped_calls(&self) -> String {
        CALL_KINDS
            .iter()
            .zip(&self.stopped)
            .map(|(kind, n)| format!("{kind}={}", n.load(Ordering::Relaxed)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn count(&self, kind: &str) {
        if let Some(i) = CALL_KINDS.iter().position(|k| *k == kind) {
            self.stopped[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Serves `listener` until no process uses the filter any more.
    pub fn serve(self: Arc<Self>, listener: OwnedFd) {
        let listener = Arc::new(listener);
        loop {
            let mut pfd = libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, -1) };
            if r < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                tracing::warn!("seccomp supervisor: poll failed, stopping");
                return;
            }
            if pfd.revents & libc::POLLIN == 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
            {
                // Every process of the program is gone.
                return;
            }
            match notify::receive(&listener) {
                Ok(Some(n)) => {
                    // Invariant: the receiving thread never dies of a bug in a handler: its
                    // end would make every watched call of the program fail with ENOSYS.
                    let this = self.clone();
                    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        this.dispatch(&listener, n)
                    }));
                    if handled.is_err() {
                        tracing::error!("seccomp: a handler panicked; the call continues");
                        notify::proceed(&listener, n.id);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("seccomp supervisor: {e}, stopping");
                    return;
                }
            }
        }
    }

    fn dispatch(self: Arc<Self>, listener: &Arc<OwnedFd>, n: Notif) {
        let nr = n.data.nr as i64;
        let args = n.data.args;
        if nr == libc::SYS_openat {
            self.count("open");
            // An absolute path ignores the directory descriptor.
            self.open_call(listener, &n, args[1], args[2] as i32);
        } else if open_syscall(nr) {
            self.count("open");
            self.open_call(listener, &n, args[0], args[1] as i32);
        } else if nr == libc::SYS_getpeername {
            self.count("getpeername");
            self.getpeername(listener, &n);
        } else if nr == libc::SYS_connect {
            self.count("connect");
            self.connect_call(listener, n);
        } else if nr == libc::SYS_bind {
            self.count("bind");
            self.bind(listener, &n);
        } else if nr == libc::SYS_listen {
            self.count("listen");
            self.listen(listener, &n);
        } else if nr == libc::SYS_sendto {
            self.count("sendto");
            self.sendto_call(listener, n);
        } else if nr == libc::SYS_recvfrom {
            self.count("recvfrom");
            self.recvfrom_call(listener, n);
        } else if nr == libc::SYS_accept4 {
            self.count("accept");
            self.accept(listener, &n, n.data.args[3] as i32);
        } else if accept_syscall(nr) {
            self.count("accept");
            self.accept(listener, &n, 0);
        } else {
            notify::proceed(listener, n.id);
        }
    }

    /// Runs `work` on a thread of its own (a slow call must not hold up the others), or, when
    /// [`MAX_WORKERS`] are busy, as `overflow` says.
    fn on_worker(
        self: Arc<Self>,
        listener: &Arc<OwnedFd>,
        n: Notif,
        overflow: Overflow,
        work: impl FnOnce(&Supervisor, &OwnedFd, &Notif) + Send + 'static,
    ) {
        let busy = self.workers.fetch_add(1, Ordering::AcqRel);
        if busy >= MAX_WORKERS {
            match overflow {
                Overflow::Inline => work(&self, listener, &n),
                Overflow::Proceed => notify::proceed(listener, n.id),
            }
            self.workers.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let listener_copy = listener.clone();
        let this = self.clone();
        let work = std::sync::Arc::new(std::sync::Mutex::new(Some(work)));
        let work_copy = work.clone();
        let spawned = std::thread::Builder::new()
            .name("mirrord-seccomp-call".into())
            .spawn(move || {
                let job = work_copy.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(job) = job {
                    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job(&this, &listener_copy, &n)
                    }));
                    if done.is_err() {
                        tracing::error!("seccomp: a handler panicked; the call continues");
                        // Harmless if the call was answered before the panic (ENOENT).
                        notify::proceed(&listener_copy, n.id);
                    }
                }
                this.workers.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            tracing::warn!("seccomp: no thread for a call ({e})");
            let job = work.lock().unwrap_or_else(|p| p.into_inner()).take();
            match (job, overflow) {
                (Some(job), Overflow::Inline) => job(&self, listener, &n),
                _ => notify::proceed(listener, n.id),
            }
            self.workers.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn accept_syscall(nr: i64) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        nr == libc::SYS_accept
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = nr;
        false
    }
}

fn open_syscall(nr: i64) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        nr == libc::SYS_open
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = nr;
        false
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}
