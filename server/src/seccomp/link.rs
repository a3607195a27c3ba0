//! The supervisor's own control channel to the session's layer proxy: it asks for UDP relays
//! and learns the data listeners exactly as a layer does, so the session and the agent need
//! nothing new for programs the layer cannot see.

use mirrord_protocol::codec::{read_frame, write_frame};
use mirrord_protocol::layer::{
    LayerControlRequest, LayerControlResponse, LayerHello, LayerRequest, ServerHello,
    ServerResponse,
};
use mirrord_protocol::PROTOCOL_VERSION;
use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Longest wait for an answer (the session answers within 25 s).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct SessionLink {
    control_path: PathBuf,
    pub token: String,
    /// Shown by the session as this channel's process.
    pid: u32,
    executable: String,
    /// One request at a time: supervisor threads take turns (a UDP open is one round trip to
    /// the agent; connects, the slow part, never use this channel).
    channel: Mutex<Option<Channel>>,
}

struct Channel {
    stream: UnixStream,
    data_addrs: Vec<SocketAddr>,
    next_id: u64,
}

fn protocol_error(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl SessionLink {
    pub fn new(control_path: PathBuf, token: String, pid: u32, executable: String) -> SessionLink {
        SessionLink {
            control_path,
            token,
            pid,
            executable,
            channel: Mutex::new(None),
        }
    }

    fn open(&self) -> io::Result<Channel> {
        let mut stream = UnixStream::connect(&self.control_path)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        write_frame(
            &mut stream,
            &LayerHello::Control {
                version: PROTOCOL_VERSION,
                token: self.token.clone(),
                pid: self.pid,
                executable: self.executable.clone(),
            },
        )
        .map_err(protocol_error)?;
        match read_frame::<ServerHello, _>(&mut stream).map_err(protocol_error)? {
            ServerHello::Welcome { data_addrs, .. } => Ok(Channel {
                stream,
                data_addrs,
                next_id: 1,
            }),
            ServerHello::Refused { reason } => Err(protocol_error(reason)),
        }
    }

    fn with_channel<T>(&self, f: impl Fn(&mut Channel) -> io::Result<T>) -> io::Result<T> {
        let mut slot = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(self.open()?);
        }
        // Invariant: the slot was filled just above.
        let result = f(slot.as_mut().expect("filled above"));
        if result.is_err() {
            // A broken channel is reopened by the next request.
            *slot = None;
        }
        result
    }

    /// The session's loopback data listeners (or the agent's, on the direct path).
    pub fn data_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.with_channel(|c| Ok(c.data_addrs.clone()))
    }

    pub fn request(&self, request: LayerRequest) -> io::Result<ServerResponse> {
        self.with_channel(|c| {
            let id = c.next_id;
            c.next_id += 1;
            write_frame(
                &mut c.stream,
                &LayerControlRequest {
                    id,
                    request: request.clone(),
                },
            )
            .map_err(protocol_error)?;
            loop {
                let answer: LayerControlResponse =
                    read_frame(&mut c.stream).map_err(protocol_error)?;
                // Answers to earlier requests whose reader gave up are skipped.
                if answer.id == id {
                    return Ok(answer.response);
                }
            }
        })
    }
}
