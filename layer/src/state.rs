//! The session this process belongs to, read once from the environment.

use mirrord_protocol::config::MirrordConfig;
use std::path::PathBuf;
use std::sync::OnceLock;

pub struct LayerState {
    pub config: MirrordConfig,
    pub token: String,
    pub proxy_path: PathBuf,
}

static STATE: OnceLock<Option<LayerState>> = OnceLock::new();
static DEBUG: OnceLock<bool> = OnceLock::new();

pub fn debug_enabled() -> bool {
    *DEBUG.get_or_init(|| std::env::var("MIRRORD_LAYER_LOG").is_ok_and(|v| v.contains("debug")))
}

/// The session, or `None` when this process runs without mirrord (every hook then bypasses).
pub fn state() -> Option<&'static LayerState> {
    STATE.get_or_init(load).as_ref()
}

/// The session was read and this process has none (e.g. an invalid `MIRRORD_CONFIG`): the
/// layer decides nothing. Never reads the session itself (safe inside its own loading).
pub fn known_inert() -> bool {
    matches!(STATE.get(), Some(None))
}

fn load() -> Option<LayerState> {
    // A panic inside the layer is caught at the hook boundary; its message goes out the same
    // way as every other diagnostic (the default hook writes through Rust's stderr handle).
    std::panic::set_hook(Box::new(|info| {
        crate::detour::log_line(&format!("internal error: {info}"));
    }));
    let proxy = std::env::var("MIRRORD_PROXY_ADDR").ok()?;
    let Some(path) = proxy.strip_prefix("unix:") else {
        complain(&format!(
            "MIRRORD_PROXY_ADDR={proxy:?} is not unix:PATH; mirrord is off for this process"
        ));
        return None;
    };
    let token = std::env::var("MIRRORD_SESSION_TOKEN").unwrap_or_default();
    let config = match std::env::var("MIRRORD_CONFIG") {
        Ok(json) => match MirrordConfig::from_json(&json) {
            Ok(c) => c,
            Err(e) => {
                complain(&format!(
                    "MIRRORD_CONFIG is invalid ({e}); mirrord is off for this process"
                ));
                return None;
            }
        },
        Err(_) => MirrordConfig::default(),
    };
    Some(LayerState {
        config,
        token,
        proxy_path: PathBuf::from(path),
    })
}

/// A problem the user must see even with logging off.
pub fn complain(msg: &str) {
    crate::detour::log_line(msg);
}
