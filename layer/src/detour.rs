//! Re-entrancy guard and the original libc functions.

use crate::state::{state, LayerState};
use std::cell::Cell;

thread_local! {
    /// Set while the layer runs on this thread; hooks seeing it call libc directly.
    static IN_LAYER: Cell<bool> = const { Cell::new(false) };
}

/// Proof that this thread entered the layer; dropping it leaves.
pub struct Guard(());

impl Guard {
    /// `None` if the thread is already inside the layer (the caller must then bypass), or if
    /// thread-local storage is gone (thread exit), where bypassing is the only safe choice.
    pub fn enter() -> Option<Guard> {
        IN_LAYER
            .try_with(|g| {
                if g.get() {
                    None
                } else {
                    g.set(true);
                    Some(Guard(()))
                }
            })
            .ok()
            .flatten()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = IN_LAYER.try_with(|g| g.set(false));
    }
}

/// Looks up the next definition of `sym` after the layer (`RTLD_NEXT`): libc's.
pub fn next_symbol(sym: &'static [u8]) -> usize {
    // SAFETY: `sym` is a NUL-terminated literal (checked by the `real!` macro's `concat!`).
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, sym.as_ptr().cast()) };
    if p.is_null() {
        let msg = b"mirrord-layer: a libc function the layer replaces is missing\n";
        // SAFETY: writing a static buffer to stderr.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::abort();
        }
    }
    p as usize
}

/// Defines `real::NAME(args)` calling libc's `NAME`, resolved once and cached.
macro_rules! real {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            #[allow(clippy::missing_safety_doc, clippy::too_many_arguments)]
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                static PTR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let mut p = PTR.load(std::sync::atomic::Ordering::Relaxed);
                if p == 0 {
                    p = $crate::detour::next_symbol(concat!(stringify!($name), "\0").as_bytes());
                    PTR.store(p, std::sync::atomic::Ordering::Relaxed);
                }
                // SAFETY: `p` is libc's definition of this very function, whose C signature the
                // declaration above repeats.
                let f: unsafe extern "C" fn($($ty),*) -> $ret = std::mem::transmute(p);
                f($($arg),*)
            }
        )*
    };
}

pub mod real {
    use libc::{
        addrinfo, c_char, c_int, c_void, hostent, msghdr, size_t, sockaddr, socklen_t, ssize_t,
    };
    real! {
        fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
        fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
        fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
        fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
        fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
        fn close(fd: c_int) -> c_int;
        fn dup(fd: c_int) -> c_int;
        fn dup2(fd: c_int, new: c_int) -> c_int;
        fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int;
        fn getaddrinfo(node: *const c_char, service: *const c_char, hints: *const addrinfo, res: *mut *mut addrinfo) -> c_int;
        fn freeaddrinfo(res: *mut addrinfo) -> ();
        fn gethostbyname(name: *const c_char) -> *mut hostent;
        fn gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent;
        fn gethostbyaddr(addr: *const c_void, len: socklen_t, af: c_int) -> *mut hostent;
        fn gethostbyaddr_r(addr: *const c_void, len: socklen_t, af: c_int, ret: *mut hostent, buf: *mut c_char, buflen: size_t, result: *mut *mut hostent, h_errnop: *mut c_int) -> c_int;
        fn getnameinfo(sa: *const sockaddr, salen: socklen_t, host: *mut c_char, hostlen: socklen_t, serv: *mut c_char, servlen: socklen_t, flags: c_int) -> c_int;
        fn gethostbyname2_r(name: *const c_char, af: c_int, ret: *mut hostent, buf: *mut c_char, len: size_t, result: *mut *mut hostent, h_errnop: *mut c_int) -> c_int;
        fn gethostbyname_r(name: *const c_char, ret: *mut hostent, buf: *mut c_char, len: size_t, result: *mut *mut hostent, h_errnop: *mut c_int) -> c_int;
        fn sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, addrlen: socklen_t) -> ssize_t;
        fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
        fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, addrlen: *mut socklen_t) -> ssize_t;
        fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
        fn fork() -> libc::pid_t;
        fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
        fn listen(fd: c_int, backlog: c_int) -> c_int;
        fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
        fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
        fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut libc::epoll_event) -> c_int;
        fn select(nfds: c_int, read: *mut libc::fd_set, write: *mut libc::fd_set, except: *mut libc::fd_set, timeout: *mut libc::timeval) -> c_int;
        fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int;
        fn ppoll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: *const libc::timespec, sigmask: *const libc::sigset_t) -> c_int;
        fn __open_2(path: *const c_char, flags: c_int) -> c_int;
        fn __open64_2(path: *const c_char, flags: c_int) -> c_int;
        fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int;
        fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int;
    }

    /// `openat` is variadic (the mode); called with its C signature, as [`fcntl`].
    pub unsafe fn openat(
        dirfd: c_int,
        path: *const c_char,
        flags: c_int,
        mode: libc::mode_t,
    ) -> c_int {
        static PTR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut p = PTR.load(std::sync::atomic::Ordering::Relaxed);
        if p == 0 {
            p = crate::detour::next_symbol(b"openat\0");
            PTR.store(p, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: libc's openat, declared with its variadic C signature; `mode` is promoted
        // to an unsigned int as C's default argument promotions do.
        let f: unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int =
            std::mem::transmute(p);
        f(dirfd, path, flags, mode as libc::c_uint)
    }

    /// `fcntl` is variadic; calling a variadic function is allowed where defining one is not.
    pub unsafe fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
        static PTR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut p = PTR.load(std::sync::atomic::Ordering::Relaxed);
        if p == 0 {
            p = crate::detour::next_symbol(b"fcntl\0");
            PTR.store(p, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: libc's fcntl, declared with its variadic C signature.
        let f: unsafe extern "C" fn(c_int, c_int, ...) -> c_int = std::mem::transmute(p);
        f(fd, cmd, arg)
    }
}

/// errno of the calling thread.
pub fn errno() -> i32 {
    // SAFETY: __errno_location always returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e }
}

/// What a hook returns, as far as errno is concerned: on success the program's errno is left as
/// it was before the call; on failure it is what the layer (or the libc call it made) set.
pub trait HookReturn {
    fn failed(&self) -> bool;
}

impl HookReturn for libc::c_int {
    fn failed(&self) -> bool {
        *self < 0
    }
}

impl HookReturn for libc::ssize_t {
    fn failed(&self) -> bool {
        *self < 0
    }
}

impl<T> HookReturn for *mut T {
    fn failed(&self) -> bool {
        self.is_null()
    }
}

impl HookReturn for () {
    fn failed(&self) -> bool {
        false
    }
}

/// The one prologue of every exported hook.
///
/// `body` runs only when this call is the layer's to look at (not re-entrant, the process is in
/// a session), inside the re-entrancy guard and an unwind barrier. It returns `Some(result)`
/// when it handled the call, `None` to let `original` (libc with the caller's arguments) run.
///
/// Invariant: nothing unwinds out of a hook (a panic is logged and the original call runs),
/// and the program's errno is preserved unless the call fails.
pub fn hook<R: HookReturn>(
    name: &'static str,
    original: impl FnOnce() -> R,
    body: impl FnOnce(&'static LayerState) -> Option<R>,
) -> R {
    hook_in(state, name, original, body)
}

/// [`hook`] with the session looked up by `session` (tests give their own).
fn hook_in<R: HookReturn>(
    session: impl FnOnce() -> Option<&'static LayerState>,
    name: &'static str,
    original: impl FnOnce() -> R,
    body: impl FnOnce(&'static LayerState) -> Option<R>,
) -> R {
    let saved = errno();
    let outcome = {
        let Some(_guard) = Guard::enter() else {
            return original();
        };
        let Some(st) = session() else {
            drop(_guard);
            set_errno(saved);
            return original();
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(st)))
    };
    match outcome {
        Ok(Some(r)) => {
            if !r.failed() {
                set_errno(saved);
            }
            r
        }
        Ok(None) => {
            set_errno(saved);
            original()
        }
        Err(_) => {
            log_line(&format!(
                "internal error in `{name}`; the call goes to libc unchanged"
            ));
            set_errno(saved);
            original()
        }
    }
}

/// Bookkeeping after a libc call the hook already made (`accept`, `dup`, ...): runs `body` as
/// [`hook`] runs its body, and leaves errno as the libc call set it.
pub fn after(name: &'static str, body: impl FnOnce(&'static LayerState)) {
    after_in(state, name, body)
}

/// [`after`] with the session looked up by `session` (tests give their own).
fn after_in(
    session: impl FnOnce() -> Option<&'static LayerState>,
    name: &'static str,
    body: impl FnOnce(&'static LayerState),
) {
    let saved = errno();
    {
        let Some(_guard) = Guard::enter() else { return };
        if let Some(st) = session() {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(st))).is_err() {
                log_line(&format!("internal error after `{name}`"));
            }
        }
    }
    set_errno(saved);
}

/// Writes one diagnostic line to stderr with a raw `write(2)`.
///
/// Invariant: the layer's diagnostics never fail the program: no Rust stderr handle (which
/// panics on `EPIPE` in `eprintln!` and holds a lock a fork child could inherit), errors
/// ignored, errno untouched.
pub fn log_line(msg: &str) {
    let saved = errno();
    let line = format!("mirrord-layer[{}]: {msg}\n", std::process::id());
    let mut buf = line.as_bytes();
    while !buf.is_empty() {
        // SAFETY: writing an owned buffer to descriptor 2; a bad descriptor only yields an error.
        let n = unsafe { libc::write(2, buf.as_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            break;
        }
        buf = &buf[n as usize..];
    }
    set_errno(saved);
}

/// Debug logging to stderr, enabled by `MIRRORD_LAYER_LOG=debug`. Quiet by default: the layer
/// runs inside someone else's program and must not clutter its output.
macro_rules! layer_debug {
    ($($t:tt)*) => {
        if $crate::state::debug_enabled() {
            $crate::detour::log_line(&format!($($t)*));
        }
    };
}
pub(crate) use layer_debug;

/// Starts one of the layer's own threads with every signal blocked, so the program's signals
/// keep going to its own threads. A process-directed signal (a Ctrl-C to the terminal's group)
/// goes to any thread that does not block it; delivered to a layer thread, it interrupts none
/// of the program's waits: Python's handler, for one, then only sets a flag while the main
/// thread sleeps on in `time.sleep`, and Ctrl-C seems lost.
pub fn spawn_without_signals<F>(name: &str, f: F) -> std::io::Result<()>
where
    F: FnOnce() + Send + 'static,
{
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset pointers; this thread's mask only, restored below.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
    }
    // Invariant: a new thread starts with its creator's mask, so it never unblocks anything.
    let spawned = std::thread::Builder::new().name(name.into()).spawn(f);
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
    spawned.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session for the hooks to see (the test process itself is in none).
    fn session() -> Option<&'static LayerState> {
        static ST: std::sync::OnceLock<LayerState> = std::sync::OnceLock::new();
        Some(ST.get_or_init(|| LayerState {
            config: Default::default(),
            token: String::new(),
            proxy_path: "/nonexistent/mirrord-layer-test".into(),
        }))
    }

    #[test]
    fn a_panicking_hook_runs_the_original_call_and_keeps_errno() {
        set_errno(42);
        let r: libc::c_int = hook_in(session, "test", || 7, |_| panic!("a bug in the layer"));
        assert_eq!((r, errno()), (7, 42));
        // The thread is not left inside the layer.
        assert!(Guard::enter().is_some());
    }

    #[test]
    fn errno_is_the_layers_on_failure_and_the_programs_on_success() {
        set_errno(42);
        let failed: libc::c_int = hook_in(
            session,
            "test",
            || 0,
            |_| {
                set_errno(libc::EINVAL);
                Some(-1)
            },
        );
        assert_eq!((failed, errno()), (-1, libc::EINVAL));
        set_errno(42);
        let done: libc::c_int = hook_in(
            session,
            "test",
            || -1,
            |_| {
                set_errno(libc::EINVAL);
                Some(0)
            },
        );
        assert_eq!((done, errno()), (0, 42));
        set_errno(42);
        after_in(session, "test", |_| set_errno(libc::EPIPE));
        assert_eq!(errno(), 42);
    }

    #[test]
    fn a_reentrant_call_goes_straight_to_the_original() {
        let outer: libc::c_int = hook_in(
            session,
            "outer",
            || -1,
            |_| Some(hook_in(session, "inner", || 5, |_| Some(9))),
        );
        assert_eq!(outer, 5);
    }

    #[test]
    fn diagnostics_to_a_closed_stderr_keep_errno() {
        set_errno(42);
        // Whatever descriptor 2 is in the test harness, the write's outcome is ignored.
        log_line("test line");
        assert_eq!(errno(), 42);
    }
}
