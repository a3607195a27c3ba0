//! Opens of `/etc/resolv.conf` and `/etc/hosts`: a sealed memfd with the target's version.

use super::super::notify::{self, Notif};
use super::*;

impl Supervisor {
    pub(super) fn open_call(&self, listener: &OwnedFd, n: &Notif, path: u64, flags: i32) {
        let Some(content) = self.served_file(n.pid, path, flags) else {
            notify::proceed(listener, n.id);
            return;
        };
        match memfd_with(content) {
            Ok(fd) => {
                if let Err(e) =
                    notify::reply_with_fd(listener, n.id, &fd, flags & libc::O_CLOEXEC != 0)
                {
                    notify::fail(listener, n.id, e.raw_os_error().unwrap_or(libc::EMFILE));
                }
            }
            Err(e) => {
                tracing::debug!("seccomp: memfd for a resolver file: {e}");
                notify::proceed(listener, n.id);
            }
        }
    }

    /// The target's version of the file the program opens, if it is one we serve and the open
    /// only reads it.
    pub(super) fn served_file(&self, tid: u32, path: u64, flags: i32) -> Option<&[u8]> {
        let files = self.files.as_ref()?;
        let not_plain_read = libc::O_WRONLY
            | libc::O_RDWR
            | libc::O_CREAT
            | libc::O_TRUNC
            | libc::O_PATH
            | libc::O_DIRECTORY;
        if flags & not_plain_read != 0 {
            return None;
        }
        // Longer than any name we serve: not ours.
        let name = notify::read_c_string(tid, path, 32)?;
        // Invariant: the paths served here are exactly `SUPERVISOR_SERVED_FILES`, the list
        // the layer opens without the mark (a test checks every listed path is served).
        served(&name).map(|which| match which {
            Served::ResolvConf => files.resolv_conf.as_slice(),
            Served::Hosts => files.hosts.as_slice(),
        })
    }
}

enum Served {
    ResolvConf,
    Hosts,
}

fn served(path: &[u8]) -> Option<Served> {
    use mirrord_protocol::config::{HOSTS_PATH, RESOLV_CONF_PATH};
    if path == RESOLV_CONF_PATH.as_bytes() {
        Some(Served::ResolvConf)
    } else if path == HOSTS_PATH.as_bytes() {
        Some(Served::Hosts)
    } else {
        None
    }
}

pub(super) fn memfd_with(content: &[u8]) -> std::io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    // SAFETY: the name is a valid C string; memfd_create returns a new descriptor or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"mirrord-target-file".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.write_all(content)?;
    file.rewind()?;
    // The program gets a read-only view of the target's file.
    // SAFETY: fcntl on our own descriptor.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_ADD_SEALS,
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
        )
    };
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    #[test]
    fn serves_exactly_the_shared_list() {
        for path in mirrord_protocol::config::SUPERVISOR_SERVED_FILES {
            assert!(super::served(path.as_bytes()).is_some(), "{path}");
        }
        for path in [
            "/etc/passwd",
            "/etc/hosts.allow",
            "etc/hosts",
            "/etc/resolv.conf/",
        ] {
            assert!(super::served(path.as_bytes()).is_none(), "{path}");
        }
    }
}
