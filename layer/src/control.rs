//! The process's control channel to the session (`MIRRORD_PROXY_ADDR`): opened on first use, one
//! request/response exchange at a time.

use crate::detour::layer_debug;
use crate::state::{complain, state};
use mirrord_protocol::codec::{read_frame, write_frame};
use mirrord_protocol::layer::{LayerHello, LayerRequest, ServerHello, ServerResponse};
use mirrord_protocol::PROTOCOL_VERSION;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Longest the layer waits for one answer. The server answers every request (a lookup gives up
/// well before this), so hitting it means the session is wedged: the program gets an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Control {
    stream: UnixStream,
    pub data_addrs: Vec<SocketAddr>,
}

/// Lock order: CONTROL before the socket table and the name map; nothing else is held across
/// the exchange.
pub static CONTROL: Mutex<Option<Control>> = Mutex::new(None);

#[derive(Debug)]
pub enum ControlError {
    /// The session is unreachable or refused us; the program must get an error, not a hang.
    Unavailable(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Unavailable(s) => f.write_str(s),
        }
    }
}

/// Locks the channel, recovering it if a thread panicked while holding it (the state is a plain
/// connection that is reopened on the next error anyway).
pub fn lock() -> MutexGuard<'static, Option<Control>> {
    CONTROL.lock().unwrap_or_else(|p| p.into_inner())
}

fn open() -> Result<Control, ControlError> {
    let st = state().ok_or_else(|| ControlError::Unavailable("no session".into()))?;
    let stream = UnixStream::connect(&st.proxy_path).map_err(|e| {
        ControlError::Unavailable(format!(
            "cannot reach the mirrord session at {}: {e}",
            st.proxy_path.display()
        ))
    })?;
    let _ = stream.set_read_timeout(Some(REPLY_TIMEOUT));
    let executable = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let hello = LayerHello::Control {
        version: PROTOCOL_VERSION,
        token: st.token.clone(),
        pid: std::process::id(),
        executable,
    };
    let mut s = &stream;
    write_frame(&mut s, &hello)
        .map_err(|e| ControlError::Unavailable(format!("session hello: {e}")))?;
    match read_frame::<ServerHello, _>(&mut s) {
        Ok(ServerHello::Welcome { data_addrs, .. }) => {
            layer_debug!("joined the session; data listeners {data_addrs:?}");
            Ok(Control { stream, data_addrs })
        }
        Ok(ServerHello::Refused { reason }) => Err(ControlError::Unavailable(format!(
            "the mirrord session refused this process: {reason}"
        ))),
        Err(e) => Err(ControlError::Unavailable(format!("session hello: {e}"))),
    }
}

fn ensure(slot: &mut Option<Control>) -> Result<&mut Control, ControlError> {
    if slot.is_none() {
        match open() {
            Ok(c) => *slot = Some(c),
            Err(e) => {
                complain(&e.to_string());
                return Err(e);
            }
        }
    }
    // Just filled above.
    Ok(slot.as_mut().expect("control channel present"))
}

/// Sends one request and waits for its answer. On any transport error the channel is dropped so
/// the next call reconnects (the session may have been restarted).
pub fn request(req: &LayerRequest) -> Result<ServerResponse, ControlError> {
    let mut slot = lock();
    let ctl = ensure(&mut slot)?;
    let mut s = &ctl.stream;
    let result = write_frame(&mut s, req).and_then(|_| read_frame::<ServerResponse, _>(&mut s));
    match result {
        Ok(resp) => Ok(resp),
        Err(e) => {
            *slot = None;
            let msg = format!("lost the mirrord session: {e}");
            complain(&msg);
            Err(ControlError::Unavailable(msg))
        }
    }
}

/// Loopback addresses of the session's data listeners (joins the session if needed).
pub fn data_addrs() -> Result<Vec<SocketAddr>, ControlError> {
    let mut slot = lock();
    Ok(ensure(&mut slot)?.data_addrs.clone())
}
