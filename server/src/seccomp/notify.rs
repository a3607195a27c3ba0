//! The kernel side of seccomp user notification: receiving a notification, answering it,
//! installing a descriptor in the program, and reaching the program's memory and sockets.

use libc::c_int;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub type Notif = libc::seccomp_notif;

fn check(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Waits for the next notification. `Ok(None)`: nothing to do now (the caller of a call that
/// was about to be reported died, or a signal came).
pub fn receive(listener: &OwnedFd) -> io::Result<Option<Notif>> {
    // SAFETY: seccomp_notif is plain data; the kernel requires it zeroed.
    let mut notif: Notif = unsafe { std::mem::zeroed() };
    // SAFETY: the ioctl writes one seccomp_notif into `notif`.
    let r = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            &mut notif,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(notif))
}

fn send(listener: &OwnedFd, id: u64, val: i64, error: i32, flags: u32) {
    let resp = libc::seccomp_notif_resp {
        id,
        val,
        error,
        flags,
    };
    // SAFETY: the ioctl reads one seccomp_notif_resp. ENOENT (the caller is gone) is fine.
    unsafe {
        libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &resp);
    }
}

/// Let the call run as if nothing had looked at it.
pub fn proceed(listener: &OwnedFd, id: u64) {
    send(
        listener,
        id,
        0,
        0,
        libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
    );
}

/// The call returns `val` without running.
pub fn succeed(listener: &OwnedFd, id: u64, val: i64) {
    send(listener, id, val, 0, 0);
}

/// The call fails with `errno` without running.
pub fn fail(listener: &OwnedFd, id: u64, errno: i32) {
    send(listener, id, 0, -errno, 0);
}

/// Installs `fd` in the caller and makes the call return its number (`SECCOMP_ADDFD_FLAG_SEND`:
/// both in one step, so the program never sees one without the other).
pub fn reply_with_fd(listener: &OwnedFd, id: u64, fd: &OwnedFd, cloexec: bool) -> io::Result<()> {
    let addfd = libc::seccomp_notif_addfd {
        id,
        flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
        srcfd: fd.as_raw_fd() as u32,
        newfd: 0,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: the ioctl reads one seccomp_notif_addfd.
    check(unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ADDFD,
            &addfd,
        )
    })
    .map(|_| ())
}

/// Whether notification `id` is still waiting (its caller alive, so the pid it named is still
/// that caller's).
pub fn still_valid(listener: &OwnedFd, id: u64) -> bool {
    // SAFETY: the ioctl reads one u64.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &id,
        ) == 0
    }
}

/// A handle on the calling thread's process.
pub fn pidfd(tid: u32) -> io::Result<OwnedFd> {
    /// `PIDFD_THREAD` (= `O_EXCL`, Linux 6.9): a pidfd for a thread that is not its process's
    /// leader; older kernels refuse it and take the thread group id instead.
    const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, PIDFD_THREAD) };
    let r = if r < 0 {
        let tgid = thread_group(tid)?;
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) }
    } else {
        r
    };
    check(r as c_int)?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// The process (thread group) of thread `tid`.
pub fn thread_group(tid: u32) -> io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Tgid"))
}

/// A duplicate of the program's descriptor `fd` (same open file: a connect on it connects the
/// program's socket).
pub fn take_fd(pidfd: &OwnedFd, fd: u64) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as c_int, 0) };
    check(r as c_int)?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Reads `len` bytes of the program's memory at `addr`. Fails if any of it is unmapped.
pub fn read_memory(tid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` points at `buf`, which has `len` bytes; the remote side is checked by the
    // kernel.
    let n = unsafe { libc::process_vm_readv(tid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    if buf.len() != len {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(buf)
}

/// Reads a NUL-terminated string of at most `max` bytes; `None` if it is longer (or unreadable).
/// Reads page by page, so a short string at the end of a mapping is still found.
pub fn read_c_string(tid: u32, addr: u64, max: usize) -> Option<Vec<u8>> {
    const PAGE: u64 = 4096;
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() <= max {
        let to_page_end = (PAGE - at % PAGE) as usize;
        let chunk = to_page_end.min(max + 1 - out.len());
        let bytes = read_memory(tid, at, chunk).ok()?;
        if let Some(nul) = bytes.iter().position(|b| *b == 0) {
            out.extend_from_slice(&bytes[..nul]);
            return Some(out);
        }
        out.extend_from_slice(&bytes);
        at += chunk as u64;
    }
    None
}

/// Writes `data` into the program's memory at `addr`.
pub fn write_memory(tid: u32, addr: u64, data: &[u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: `local` points at `data`; the kernel checks the remote side.
    let n = unsafe { libc::process_vm_writev(tid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

/// An integer socket option of our duplicate of the program's socket.
pub fn sockopt_int(fd: &OwnedFd, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for the call.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &mut v as *mut c_int as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(v)
}

/// The socket's inode: what identifies it across descriptor numbers and processes.
pub fn inode(fd: &OwnedFd) -> io::Result<u64> {
    // SAFETY: stat is plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for fstat to write.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st.st_ino)
}
