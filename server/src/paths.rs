//! Where the server keeps its sockets, and where it finds the agent and the layer.

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Per-user runtime directory for session sockets, created 0700.
///
/// `MIRRORD_RUNTIME_DIR` wins; then `$XDG_RUNTIME_DIR/mirrord`; then `/tmp/mirrord-<uid>`.
pub fn runtime_dir() -> Result<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("MIRRORD_RUNTIME_DIR") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(d).join("mirrord")
    } else {
        // SAFETY: getuid cannot fail.
        PathBuf::from(format!("/tmp/mirrord-{}", unsafe { libc::getuid() }))
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let meta = std::fs::metadata(&dir)?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if std::os::unix::fs::MetadataExt::uid(&meta) != uid {
        anyhow::bail!(
            "{} belongs to another user; set MIRRORD_RUNTIME_DIR",
            dir.display()
        );
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// A helper file next to the running executable (`target/debug/` in a build, `bin/` installed).
fn beside_exe(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.exists().then_some(p)
}

/// Finds a helper: the explicit path, then the environment variable, then beside the executable.
pub fn locate(explicit: Option<&Path>, env: &str, file: &str) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    beside_exe(file).with_context(|| {
        format!("cannot find {file}: it is not next to this executable; set {env} to its path")
    })
}

pub fn layer_path(explicit: Option<&Path>) -> Result<PathBuf> {
    locate(explicit, "MIRRORD_LAYER_FILE", "libmirrord_layer.so")
}

pub fn agent_path(explicit: Option<&Path>) -> Result<PathBuf> {
    locate(explicit, "MIRRORD_AGENT_PATH", "mirrord-agent")
}
