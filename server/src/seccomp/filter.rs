//! The seccomp filter the launcher installs in the program's process just before `exec`, and
//! the hand-over of its notification listener to the session.
//!
//! The child runs between `fork` and `exec` (`pre_exec`): only async-signal-safe calls, no
//! allocation. It installs the filter with `SECCOMP_FILTER_FLAG_NEW_LISTENER` and sends the
//! listener to the session over a socketpair (`SCM_RIGHTS`), together with a 4-byte status: 0,
//! or the errno that made the install fail (the program then runs without interception).

use libc::{c_int, sock_filter, sock_fprog};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The architecture the filter's syscall numbers belong to; calls of any other ABI (32-bit
/// programs, x32) are allowed untouched.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64

/// The calls the session looks at, unless they carry the session's mark in `args[5]`. `open`
/// exists only on some architectures (aarch64 has `openat` alone).
///
/// Invariant: every call here takes at most five arguments, so the kernel ignores `args[5]`
/// and the layer may put the mark there without changing what the call does.
fn watched_calls() -> Vec<i64> {
    let mut calls = vec![
        libc::SYS_connect,
        libc::SYS_getpeername,
        libc::SYS_openat,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept4,
    ];
    // aarch64 has accept4 only.
    #[cfg(target_arch = "x86_64")]
    calls.push(libc::SYS_accept);
    #[cfg(target_arch = "x86_64")]
    calls.push(libc::SYS_open);
    calls
}

/// Calls watched only when their address argument (`args[4]`: `sendto`'s destination,
/// `recvfrom`'s source buffer) is not NULL: a program's ordinary `send`/`recv` on a connected
/// socket never stops.
fn calls_with_address() -> [i64; 2] {
    [libc::SYS_sendto, libc::SYS_recvfrom]
}

/// Where a jump of the program goes.
#[derive(Clone, Copy)]
enum To {
    Next,
    Allow,
    Notify,
    CheckAddress,
    CheckMark,
}

/// One instruction before the jump offsets are known.
struct Ins {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

/// The BPF program: notify the session of the watched calls of this architecture, except those
/// whose `args[5]` is `mark` (the layer's, already decided), allow the rest.
///
/// Invariant: `mark` is not 0 (see [`new_mark`]): every ordinary call of a program has 0 in
/// its unused sixth argument register often enough that a zero mark would let them all pass.
pub fn program(mark: u64) -> Vec<sock_filter> {
    // Offsets in struct seccomp_data (little-endian halves of args[4] and args[5]).
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const ARG4_LO: u32 = 16 + 8 * 4;
    const ARG4_HI: u32 = ARG4_LO + 4;
    const ARG5_LO: u32 = 16 + 8 * 5;
    const ARG5_HI: u32 = ARG5_LO + 4;
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ja = (libc::BPF_JMP | libc::BPF_JA) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code, k| Ins {
        code,
        k,
        jt: To::Next,
        jf: To::Next,
    };
    let test = |k, jt, jf| Ins {
        code: jeq,
        k,
        jt,
        jf,
    };
    let mut p = vec![
        op(ld, ARCH),
        // Another ABI (32-bit programs, x32): allowed untouched.
        test(AUDIT_ARCH, To::Next, To::Allow),
        op(ld, NR),
    ];
    for nr in watched_calls() {
        p.push(test(nr as u32, To::CheckMark, To::Next));
    }
    for nr in calls_with_address() {
        p.push(test(nr as u32, To::CheckAddress, To::Next));
    }
    p.push(Ins {
        code: ja,
        k: 0,
        jt: To::Allow,
        jf: To::Allow,
    });
    let check_address = p.len();
    p.push(op(ld, ARG4_LO));
    p.push(test(0, To::Next, To::Notify));
    p.push(op(ld, ARG4_HI));
    p.push(test(0, To::Allow, To::Notify));
    // A watched call with the mark in args[5] (both halves) is the layer's: allowed.
    let check_mark = p.len();
    p.push(op(ld, ARG5_LO));
    p.push(test(mark as u32, To::Next, To::Notify));
    p.push(op(ld, ARG5_HI));
    p.push(test((mark >> 32) as u32, To::Allow, To::Notify));
    let allow = p.len();
    p.push(op(ret, libc::SECCOMP_RET_ALLOW));
    let notify = p.len();
    p.push(op(ret, libc::SECCOMP_RET_USER_NOTIF));
    let offset = |at: usize, to: To| -> usize {
        let target = match to {
            To::Next => at + 1,
            To::Allow => allow,
            To::Notify => notify,
            To::CheckAddress => check_address,
            To::CheckMark => check_mark,
        };
        target - (at + 1)
    };
    p.iter()
        .enumerate()
        .map(|(at, i)| {
            if i.code == ja {
                stmt(ja, offset(at, i.jt) as u32)
            } else if i.code == jeq {
                // Invariant: the program is far shorter than 256 instructions, so every
                // forward offset fits BPF's 8-bit conditional jumps.
                sock_filter {
                    code: jeq,
                    jt: offset(at, i.jt) as u8,
                    jf: offset(at, i.jf) as u8,
                    k: i.k,
                }
            } else {
                stmt(i.code, i.k)
            }
        })
        .collect()
}

/// A fresh random mark for one session's filter, never 0 (see [`program`]).
pub fn new_mark() -> std::io::Result<u64> {
    loop {
        let mut bytes = [0u8; 8];
        // SAFETY: `bytes` has room for the 8 bytes asked for.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        let mark = u64::from_ne_bytes(bytes);
        if n as usize == bytes.len() && mark != 0 {
            return Ok(mark);
        }
    }
}

const fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The two ends of the hand-over socketpair: the session keeps `session`, the child writes to
/// `child` in `pre_exec`.
pub struct Handover {
    pub session: OwnedFd,
    pub child: OwnedFd,
}

pub fn handover() -> std::io::Result<Handover> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds has room for the two descriptors socketpair writes.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe {
        Handover {
            session: OwnedFd::from_raw_fd(fds[0]),
            child: OwnedFd::from_raw_fd(fds[1]),
        }
    })
}

/// In the child, between `fork` and `exec`: installs `filter` and sends the listener (or the
/// errno of the failure) through `child_end`. Never fails the launch: a program without
/// interception still runs as it did before this existed.
///
/// # Safety
/// Only in a forked child before `exec`; `filter` must stay valid (it was built before fork).
pub unsafe fn install_in_child(filter: &[sock_filter], child_end: RawFd) {
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut sock_filter,
    };
    let install = || {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const sock_fprog,
        ) as c_int
    };
    let mut listener = install();
    if listener < 0 && *libc::__errno_location() == libc::EACCES {
        // Without CAP_SYS_ADMIN the kernel wants no_new_privs: setuid programs started under
        // mirrord then run without their extra privileges.
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        listener = install();
    }
    let status: u32 = if listener < 0 {
        *libc::__errno_location() as u32
    } else {
        0
    };
    send_status(child_end, status, listener);
    if listener >= 0 {
        libc::close(listener);
    }
    libc::close(child_end);
}

/// Async-signal-safe: stack buffers only.
unsafe fn send_status(sock: RawFd, status: u32, fd: c_int) {
    let mut payload = status.to_ne_bytes();
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // Room for one cmsg holding one descriptor (CMSG_SPACE(4) is 24 on 64-bit Linux).
    let mut control = [0u64; 4];
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if fd >= 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as _;
        std::ptr::copy_nonoverlapping(
            &fd as *const c_int as *const u8,
            libc::CMSG_DATA(cmsg),
            std::mem::size_of::<c_int>(),
        );
    }
    libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
}

/// What the child reported, read once the program is running (`spawn` returns after `exec`, so
/// the message is already there).
pub enum Installed {
    Listener(OwnedFd),
    /// The kernel refused the filter (errno), e.g. a container whose seccomp profile forbids
    /// `seccomp(2)`, or a kernel without user notification.
    Refused(i32),
    /// Nothing came (the child died before sending).
    Missing,
}

pub fn receive(session_end: &OwnedFd) -> Installed {
    let mut payload = [0u8; 4];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; every pointer in it refers to the buffers above, which
    // outlive the call.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(
            session_end.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        );
        if n != 4 {
            return Installed::Missing;
        }
        let status = u32::from_ne_bytes(payload);
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Installed::Refused(status as i32);
        }
        let mut fd: c_int = -1;
        std::ptr::copy_nonoverlapping(
            libc::CMSG_DATA(cmsg),
            &mut fd as *mut c_int as *mut u8,
            std::mem::size_of::<c_int>(),
        );
        Installed::Listener(OwnedFd::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK: u64 = 0x0123_4567_89ab_cdef;

    /// Runs the program the way the kernel does for the instructions it uses.
    fn verdict(p: &[sock_filter], arch: u32, nr: i64, arg4: u64, arg5: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        data[48..56].copy_from_slice(&arg4.to_le_bytes());
        data[56..64].copy_from_slice(&arg5.to_le_bytes());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p[pc];
            match i.code as u32 {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    let at = i.k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                    pc += 1;
                }
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += 1 + if acc == i.k { i.jt } else { i.jf } as usize;
                }
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += 1 + i.k as usize,
                c if c == libc::BPF_RET | libc::BPF_K => return i.k,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    #[test]
    fn notifies_exactly_the_watched_calls_without_the_mark() {
        let p = program(MARK);
        let (allow, notify) = (libc::SECCOMP_RET_ALLOW, libc::SECCOMP_RET_USER_NOTIF);
        for nr in watched_calls() {
            assert_eq!(verdict(&p, AUDIT_ARCH, nr, 0, 0), notify, "call {nr}");
            assert_eq!(verdict(&p, AUDIT_ARCH, nr, 0, MARK), allow, "call {nr}");
            // Both halves must match.
            let halves = [
                MARK & 0xffff_ffff,
                MARK & !0xffff_ffff,
                MARK ^ 1,
                MARK ^ (1 << 40),
            ];
            for wrong in halves {
                assert_eq!(verdict(&p, AUDIT_ARCH, nr, 0, wrong), notify, "call {nr}");
            }
            // Another ABI's call with the same number is allowed.
            assert_eq!(verdict(&p, 0x4000_0003, nr, 0, 0), allow, "call {nr}");
        }
        for nr in calls_with_address() {
            assert_eq!(
                verdict(&p, AUDIT_ARCH, nr, 0, 0),
                allow,
                "call {nr} without address"
            );
            assert_eq!(verdict(&p, AUDIT_ARCH, nr, 0x7ffd_0000_1000, 0), notify);
            assert_eq!(verdict(&p, AUDIT_ARCH, nr, 0x1_0000_0000, 0), notify);
            // All six arguments are theirs: args[5] says nothing.
            assert_eq!(verdict(&p, AUDIT_ARCH, nr, 0x7ffd_0000_1000, MARK), notify);
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_sendmsg,
        ] {
            assert_eq!(verdict(&p, AUDIT_ARCH, nr, 0x1000, 0), allow, "call {nr}");
        }
    }

    #[test]
    fn marks_are_random_and_never_zero() {
        let (a, b) = (new_mark().unwrap(), new_mark().unwrap());
        assert!(a != 0 && b != 0 && a != b);
    }

    /// The real kernel, not the interpreter above: a child installs the filter with a listener
    /// and makes marked and unmarked calls on a bad descriptor; only the unmarked ones reach
    /// the listener (answered with "continue", they fail with EBADF as without the filter).
    #[test]
    fn the_kernel_notifies_only_unmarked_calls() {
        use std::os::fd::AsFd;
        let filter = program(MARK);
        let h = handover().unwrap();
        // SAFETY: the child makes only raw system calls (install_in_child is
        // async-signal-safe and uses the filter built before fork) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: see above; every pointer argument is NULL (the descriptor is bad anyway).
            unsafe {
                install_in_child(&filter, h.child.as_raw_fd());
                let mut bad = 0;
                for (nr, mark) in [
                    (libc::SYS_getpeername, MARK),
                    (libc::SYS_connect, MARK),
                    (libc::SYS_getpeername, 0),
                    (libc::SYS_connect, 0),
                ] {
                    let r = libc::syscall(nr, -1, 0, 0, 0, 0, mark as i64);
                    if r != -1 || *libc::__errno_location() != libc::EBADF {
                        bad += 1;
                    }
                }
                libc::_exit(bad);
            }
        }
        drop(h.child);
        // The child sends the listener right after installing the filter.
        let mut pfd = libc::pollfd {
            fd: h.session.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 10_000) }, 1);
        let listener = match receive(&h.session) {
            Installed::Listener(fd) => fd,
            Installed::Refused(e) => panic!("the kernel refused the filter: errno {e}"),
            Installed::Missing => panic!("the child sent no listener"),
        };
        let mut seen = Vec::new();
        loop {
            let mut pfd = libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, 10_000) };
            assert_eq!(r, 1, "the child neither called nor exited within 10 s");
            if pfd.revents & libc::POLLIN == 0 {
                // POLLHUP: the child is gone.
                break;
            }
            if let Some(n) = super::super::notify::receive(&listener).unwrap() {
                seen.push((n.data.nr as i64, n.data.args[5]));
                super::super::notify::proceed(&listener, n.id);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "calls that did not fail with EBADF"
        );
        assert_eq!(
            seen,
            [(libc::SYS_getpeername, 0), (libc::SYS_connect, 0)],
            "notifications"
        );
    }
}
