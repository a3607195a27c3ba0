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

/// A file mirrord needs next to its executable, and the command that builds it.
pub struct Helper {
    /// File name beside the executable.
    pub file: &'static str,
    /// Environment variable that overrides the location.
    pub env: &'static str,
    /// The cargo command that builds it from a checkout: the layer is a cdylib, which
    /// `cargo build --bins` skips, so a build of the binaries alone leaves it missing.
    pub build: &'static str,
}

pub const LAYER: Helper = Helper {
    file: "libmirrord_layer.so",
    env: "MIRRORD_LAYER_FILE",
    build: "cargo build -p mirrord-layer",
};

pub const AGENT: Helper = Helper {
    file: "mirrord-agent",
    env: "MIRRORD_AGENT_PATH",
    build: "cargo build -p mirrord-agent",
};

/// Finds a helper: the explicit path, then the environment variable, then beside the executable.
/// A path that does not exist is an error naming where it came from and how to build the file.
pub fn locate(explicit: Option<&Path>, helper: &Helper) -> Result<PathBuf> {
    let Helper { file, env, build } = helper;
    let hint = format!("build it with `{build}` (or `cargo build --workspace`)");
    if let Some(p) = explicit {
        anyhow::ensure!(p.exists(), "{file} not found at {}; {hint}", p.display());
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        anyhow::ensure!(
            p.exists(),
            "{file} not found at {} (from {env}); {hint}",
            p.display()
        );
        return Ok(p);
    }
    beside_exe(file).with_context(|| {
        format!(
            "cannot find {file}: it is not next to this executable; {hint}, or set {env} to its \
             path"
        )
    })
}

pub fn layer_path(explicit: Option<&Path>) -> Result<PathBuf> {
    locate(explicit, &LAYER)
}

pub fn agent_path(explicit: Option<&Path>) -> Result<PathBuf> {
    locate(explicit, &AGENT)
}
