//! The session's own resource limits.
//!
//! Every incoming or outgoing flow costs the session two descriptors (the agent's channel and
//! the program's socket), so the usual soft limit of 1,024 open files caps a session at about
//! 500 concurrent flows; the session raises its soft limit to the hard one at start. The
//! program keeps the limit it was given: mirrord's needs are not the program's, and a program
//! that uses `select(2)` must not see descriptors above 1,024 because of mirrord.

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use std::sync::OnceLock;

/// The (soft, hard) `RLIMIT_NOFILE` this process had before [`raise_open_files`] raised it.
static ORIGINAL_OPEN_FILES: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises this process's soft open-file limit to its hard limit (once; later calls do nothing).
pub fn raise_open_files() {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= hard || ORIGINAL_OPEN_FILES.set((soft, hard)).is_err() {
        return;
    }
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        tracing::debug!("raising the open-file limit from {soft} to {hard}: {e}");
    }
}

/// Makes `command`'s program start with the open-file limit this process started with.
pub fn restore_in_child(command: &mut tokio::process::Command) {
    let Some(&(soft, hard)) = ORIGINAL_OPEN_FILES.get() else {
        return;
    };
    // SAFETY: the closure runs between fork and exec and makes one system call (no allocation,
    // no lock), which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
            Ok(())
        });
    }
}
