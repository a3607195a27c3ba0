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

/// The calls the session looks at. `open` exists only on some architectures (aarch64 has
/// `openat` alone).
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

const fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The BPF program: notify the session of the watched calls of this architecture, allow the
/// rest.
pub fn program() -> Vec<sock_filter> {
    // Offsets in struct seccomp_data.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let calls = watched_calls();
    let n = calls.len() as u8;
    let mut p = vec![
        stmt(ld, ARCH),
        // Another ABI: jump over the number checks and the notify to the allow.
        jump(jeq, AUDIT_ARCH, 0, n + 1),
        stmt(ld, NR),
    ];
    for (i, nr) in calls.iter().enumerate() {
        // On a match, jump to the notify right after the last check.
        let to_notify = n - 1 - i as u8 + 1;
        p.push(jump(jeq, *nr as u32, to_notify, 0));
    }
    p.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    p.push(stmt(ret, libc::SECCOMP_RET_USER_NOTIF));
    p
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

    #[test]
    fn jumps_land_on_allow_and_notify() {
        let p = program();
        let ret = (libc::BPF_RET | libc::BPF_K) as u16;
        let allow = p.len() - 2;
        let notify = p.len() - 1;
        assert_eq!(p[allow].k, libc::SECCOMP_RET_ALLOW);
        assert_eq!(p[notify].k, libc::SECCOMP_RET_USER_NOTIF);
        assert_eq!(p[notify].code, ret);
        // The arch check's false branch lands on the allow.
        assert_eq!(1 + 1 + p[1].jf as usize, allow);
        for (i, check) in p.iter().enumerate().take(allow).skip(3) {
            assert_eq!(i + 1 + check.jt as usize, notify, "check {i}");
            assert_eq!(check.jf, 0);
        }
    }
}
