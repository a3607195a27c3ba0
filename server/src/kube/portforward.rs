//! The port-forward transport: each channel to a Kubernetes agent (control, every TCP flow,
//! every UDP or incoming flow) is its own `pods/NAME/portforward` WebSocket, so a large
//! download on one flow never stalls another.
//!
//! The stream reads and writes the WebSocket in place (subprotocol `v4.channel.k8s.io`: every
//! binary message starts with its channel byte, data on 0 and errors on 1 for the one port
//! asked for, and the server first sends the port on each). kube's own `Portforwarder` runs a
//! task per WebSocket and hands bytes over through an in-memory pipe and a channel; doing the
//! WebSocket and TLS work in the caller's poll instead saves two copies and two task wake-ups
//! per message, and lets the flow's relay (`mirrord_relay`) choose the runtime that does that
//! work, so a download's TLS records are encrypted at the bulk priority.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes per WebSocket message sent to the pod: large enough that framing and TLS records
/// cost little per byte, small enough to keep one message's latency low.
const MAX_MESSAGE: usize = 64 * 1024;

const DATA_CHANNEL: u8 = 0;
const ERROR_CHANNEL: u8 = 1;

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// One port-forward stream to the agent's port.
pub struct PortForwardStream {
    ws: Ws,
    /// What is left of the last data message.
    unread: Bytes,
    /// The server's first message on each channel (the port) has been seen.
    data_started: bool,
    error_started: bool,
    /// The WebSocket has ended (close frame or end of stream): reads give EOF.
    ended: bool,
    /// A message was queued but not yet flushed: the next read, write or flush finishes it.
    /// Callers of this stream (the hello, the relays) write and then wait for an answer without
    /// flushing, as they may with a socket, so every write is flushed as far as it goes.
    flush_pending: bool,
}

/// Opens a port-forward to `port` of `pod`.
pub async fn open(
    client: &Client,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Result<PortForwardStream, kube::Error> {
    let url = <Pod as kube::Resource>::url_path(&(), Some(namespace));
    let request = kube::core::Request::new(url)
        .portforward(pod, &[port])
        .map_err(kube::Error::BuildRequest)?;
    let connection = client.connect(request).await?;
    Ok(PortForwardStream {
        ws: connection.into_stream(),
        unread: Bytes::new(),
        data_started: false,
        error_started: false,
        ended: false,
        flush_pending: false,
    })
}

impl AsyncRead for PortForwardStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.flush_pending {
            if let Poll::Ready(flushed) = Pin::new(&mut this.ws).poll_flush(cx) {
                flushed.map_err(ws_error)?;
                this.flush_pending = false;
            }
        }
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread[..n]);
                this.unread.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(mut message))) if !message.is_empty() => {
                    let channel = message[0];
                    message.advance(1);
                    match channel {
                        DATA_CHANNEL if !this.data_started => this.data_started = true,
                        DATA_CHANNEL => this.unread = message,
                        ERROR_CHANNEL if !this.error_started => this.error_started = true,
                        ERROR_CHANNEL if !message.is_empty() => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                format!(
                                    "the port-forward failed: {}",
                                    String::from_utf8_lossy(&message)
                                ),
                            )));
                        }
                        // Channels of ports not asked for, or an empty error: nothing to pass on.
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => this.ended = true,
                // Pings are answered by the WebSocket itself; text and empty frames carry nothing.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
            }
        }
    }
}

impl AsyncWrite for PortForwardStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut ws = Pin::new(&mut this.ws);
        if this.flush_pending {
            ready!(ws.as_mut().poll_flush(cx)).map_err(ws_error)?;
            this.flush_pending = false;
        }
        ready!(ws.as_mut().poll_ready(cx)).map_err(ws_error)?;
        let n = buf.len().min(MAX_MESSAGE);
        let mut message = Vec::with_capacity(n + 1);
        message.push(DATA_CHANNEL);
        message.extend_from_slice(&buf[..n]);
        ws.as_mut()
            .start_send(Message::binary(message))
            .map_err(ws_error)?;
        match ws.poll_flush(cx) {
            Poll::Ready(flushed) => flushed.map_err(ws_error)?,
            Poll::Pending => this.flush_pending = true,
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(ws_error)?;
        self.flush_pending = false;
        Poll::Ready(Ok(()))
    }

    /// The port-forward protocol has no half-close: ending the writing side ends the stream
    /// (as with `kubectl port-forward`).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_error)
    }
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(e) => e,
        Error::ConnectionClosed | Error::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::ConnectionAborted, other),
    }
}
