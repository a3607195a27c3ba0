//! Length-prefixed frames: a 4-byte big-endian payload length, then the payload encoded with
//! bincode 2 (standard config, varint integers).
//!
//! Decoding never trusts the peer: a length above [`MAX_FRAME_LEN`] is rejected before anything
//! is allocated, and bincode itself is limited to the frame length, so a hostile length field
//! inside the payload cannot make it allocate more either.

use serde::{de::DeserializeOwned, Serialize};
use std::io::{self, Read, Write};

/// Largest payload a frame may carry. Control messages are small; UDP datagrams are at most 64 KiB.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

const CONFIG: bincode::config::Configuration<
    bincode::config::BigEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_LEN>,
> = bincode::config::standard()
    .with_big_endian()
    .with_variable_int_encoding()
    .with_limit::<MAX_FRAME_LEN>();

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    FrameTooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame has {0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("peer closed the connection")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl CodecError {
    /// Whether the error means the peer went away (as opposed to speaking garbage).
    pub fn is_closed(&self) -> bool {
        match self {
            CodecError::Closed => true,
            CodecError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::serde::encode_into_std_write(msg, &mut out, CONFIG)
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge(len));
    }
    // Cannot truncate: len <= MAX_FRAME_LEN < u32::MAX.
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes one frame's payload (without the length prefix). The whole payload must be used.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge(payload.len()));
    }
    let (msg, used) = bincode::serde::decode_from_slice(payload, CONFIG)
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::TrailingBytes(payload.len() - used));
    }
    Ok(msg)
}

/// Parses the length prefix; rejects lengths above the limit.
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge(len));
    }
    Ok(len)
}

/// Tries to decode one frame from the front of `buf`. `Ok(None)` means more bytes are needed;
/// otherwise returns the message and how many bytes of `buf` it used.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, CodecError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&buf[..HEADER_LEN]);
    let len = frame_len(header)?;
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    let msg = decode_payload(&buf[HEADER_LEN..HEADER_LEN + len])?;
    Ok(Some((msg, HEADER_LEN + len)))
}

/// Blocking read of exactly one frame. Reads no byte past the frame, so a stream that turns into
/// raw data after this frame loses nothing.
pub fn read_frame<T: DeserializeOwned, R: Read>(r: &mut R) -> Result<T, CodecError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact_or_closed(r, &mut header)?;
    let len = frame_len(header)?;
    let mut payload = vec![0u8; len];
    read_exact_or_closed(r, &mut payload)?;
    decode_payload(&payload)
}

fn read_exact_or_closed<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), CodecError> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(CodecError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Blocking write of one frame.
pub fn write_frame<T: Serialize, W: Write>(w: &mut W, msg: &T) -> Result<(), CodecError> {
    let frame = encode(msg)?;
    w.write_all(&frame)?;
    Ok(())
}

#[cfg(feature = "tokio")]
mod asynchronous {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Async read of exactly one frame; reads no byte past it.
    pub async fn read_frame_async<T: DeserializeOwned, R: AsyncRead + Unpin>(
        r: &mut R,
    ) -> Result<T, CodecError> {
        let mut header = [0u8; HEADER_LEN];
        read_exact_async(r, &mut header).await?;
        let len = frame_len(header)?;
        let mut payload = vec![0u8; len];
        read_exact_async(r, &mut payload).await?;
        decode_payload(&payload)
    }

    async fn read_exact_async<R: AsyncRead + Unpin>(
        r: &mut R,
        buf: &mut [u8],
    ) -> Result<(), CodecError> {
        match r.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(CodecError::Closed),
            Err(e) => Err(e.into()),
        }
    }

    /// Async write of one frame.
    pub async fn write_frame_async<T: Serialize, W: AsyncWrite + Unpin>(
        w: &mut W,
        msg: &T,
    ) -> Result<(), CodecError> {
        let frame = encode(msg)?;
        w.write_all(&frame).await?;
        // A port-forward stream queues each write as a WebSocket message and sends on flush:
        // without it, a frame (the hello) may never leave.
        w.flush().await?;
        Ok(())
    }
}

#[cfg(feature = "tokio")]
pub use asynchronous::{read_frame_async, write_frame_async};
