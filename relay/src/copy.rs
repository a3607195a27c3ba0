//! Copies both directions of a flow, as `tokio::io::copy_bidirectional` does (each half-close
//! is passed on; the first error ends the flow), with its state in one value that can move
//! between runtimes and with a count of the bytes moved.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One direction: bytes read from one side, not yet all written to the other.
struct OneWay {
    buf: Box<[u8]>,
    /// `buf[pos..filled]` is read and not yet written.
    pos: usize,
    filled: usize,
    read_done: bool,
    /// Something was written since the last flush.
    need_flush: bool,
    done: bool,
}

impl OneWay {
    fn new(size: usize) -> Self {
        OneWay {
            buf: vec![0; size.max(1)].into_boxed_slice(),
            pos: 0,
            filled: 0,
            read_done: false,
            need_flush: false,
            done: false,
        }
    }

    /// Moves bytes until the reader has nothing now (flushing the writer then), the writer is
    /// full, or the reader has ended and the writer is shut down (`Ready(Ok)`). `moved` grows by
    /// the bytes written.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        moved: &mut u64,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.filled && !self.read_done {
                self.pos = 0;
                self.filled = 0;
                let mut rb = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.filled = n;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to read now: what was written must reach the peer
                        // before this direction sleeps.
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.filled {
                let n = ready!(writer
                    .as_mut()
                    .poll_write(cx, &self.buf[self.pos..self.filled]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                *moved += n as u64;
                self.need_flush = true;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                self.need_flush = false;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Both directions of a flow between `a` and `b`, with their buffers.
pub struct Relay<A, B> {
    a: A,
    b: B,
    a_to_b: OneWay,
    b_to_a: OneWay,
    /// Bytes written to either side so far.
    moved: u64,
}

impl<A, B> Relay<A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    /// A relay with a buffer of `buffer` bytes per direction.
    pub fn new(a: A, b: B, buffer: usize) -> Self {
        Relay {
            a,
            b,
            a_to_b: OneWay::new(buffer),
            b_to_a: OneWay::new(buffer),
            moved: 0,
        }
    }

    /// Bytes written to either side so far.
    pub fn moved(&self) -> u64 {
        self.moved
    }

    /// Moves what can be moved now; `Ready` once both directions have ended, or at the first
    /// error.
    pub fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Relay {
            a,
            b,
            a_to_b,
            b_to_a,
            moved,
        } = self;
        let forward = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b), moved)?;
        let backward = b_to_a.poll_copy(cx, Pin::new(b), Pin::new(a), moved)?;
        if forward.is_ready() && backward.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// The streams back, e.g. to close them in a particular way.
    pub fn into_inner(self) -> (A, B) {
        (self.a, self.b)
    }
}

impl<A, B> Future for Relay<A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_relay(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_passes_each_half_close_on() {
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let relay = tokio::spawn(Relay::new(a, b, 7));
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload, "a → b bytes, then a's half-close as EOF");
        server
            .write_all(b"reply after the half-close")
            .await
            .unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply after the half-close");
        relay.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn counts_the_bytes_it_moves() {
        let (mut client, a) = tokio::io::duplex(1024);
        let (b, mut server) = tokio::io::duplex(1024);
        client.write_all(&[1; 300]).await.unwrap();
        client.shutdown().await.unwrap();
        server.write_all(&[2; 200]).await.unwrap();
        server.shutdown().await.unwrap();
        let mut relay = Relay::new(a, b, 64);
        (&mut relay).await.unwrap();
        assert_eq!(relay.moved(), 500);
    }
}
