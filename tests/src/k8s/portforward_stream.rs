//! The data channel of a one-port port-forward as a byte stream (the kubelet's side of
//! `v4.channel.k8s.io`): reads are the client's channel-0 messages, writes become channel-0
//! messages. With it, the simulator relays a port-forward like any other flow, through
//! `mirrord_relay`, so a download's TLS records are encrypted at the bulk priority: this API
//! server shares the developer's cores, which a real one does not, and its bulk work must not
//! stand in for the laptop's.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes per message towards the client.
const MAX_MESSAGE: usize = 64 * 1024;

pub(crate) struct DataChannel<S> {
    ws: WebSocketStream<S>,
    unread: Bytes,
    ended: bool,
    flush_pending: bool,
}

impl<S> DataChannel<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    /// `ws` after the server's first messages (the port on both channels) were sent.
    pub(crate) fn new(ws: WebSocketStream<S>) -> Self {
        DataChannel {
            ws,
            unread: Bytes::new(),
            ended: false,
            flush_pending: false,
        }
    }
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, e)
}

impl<S> AsyncRead for DataChannel<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
                // Channel 0 is the one port's data; odd channels carry no client data.
                Some(Ok(Message::Binary(mut data))) if data.len() > 1 && data[0] == 0 => {
                    data.advance(1);
                    this.unread = data;
                }
                Some(Ok(Message::Close(_))) | None => this.ended = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
            }
        }
    }
}

impl<S> AsyncWrite for DataChannel<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
        message.push(0);
        message.extend_from_slice(&buf[..n]);
        ws.as_mut()
            .start_send(Message::binary(message))
            .map_err(ws_error)?;
        // Written as far as it goes now; the next read, write or flush finishes it.
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

    /// No half-close in this protocol: the pod's end of the stream closes the WebSocket.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_error)
    }
}
