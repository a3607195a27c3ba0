//! Sockets whose readiness is watched by the runtime that moves their bytes.
//!
//! A tokio socket is registered with the I/O driver of the runtime it was made on, and stays
//! there. When a flow turns bulk and continues on the bulk runtime ([`crate::priority`]), its
//! sockets' readiness events would still be picked up by the caller's runtime (threads at normal
//! priority), which then wakes a bulk thread to move the bytes: two context switches per event,
//! at normal priority, for every chunk of a download. Measured on the Kubernetes path (perf,
//! 200 MiB download beside keep-alive requests): the session's, the agent's and the simulated
//! API server's normal-priority workers spent most of their samples in wake-ups and context
//! switches of exactly that hand-over, CPU the scheduler cannot give to the requests.
//!
//! [`Following`] wraps a socket and, whenever it is polled on a thread of another kind (one of
//! the bulk runtimes, or any other) than the one its registration belongs to, registers a duplicate of its descriptor
//! with the polling thread's runtime and drops the old registration. The socket itself (the
//! kernel object, its buffers, options and peer) never changes.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

thread_local! {
    /// Which bulk runtime this thread belongs to (set when its threads start), 0 for any
    /// other thread.
    static BULK_RUNTIME: Cell<u8> = const { Cell::new(0) };
}

pub(crate) fn mark_bulk_thread(runtime: u8) {
    BULK_RUNTIME.with(|b| b.set(runtime));
}

fn this_threads_runtime() -> u8 {
    BULK_RUNTIME.with(|b| b.get())
}

/// A tokio socket that can be registered again with the current runtime.
pub trait Reregister: Sized + AsFd {
    /// A new registration of a duplicate of this socket's descriptor, with the runtime of the
    /// calling thread.
    fn register_duplicate(&self) -> io::Result<Self>;
}

fn duplicate(fd: &impl AsFd) -> io::Result<OwnedFd> {
    let dup = fd.as_fd().try_clone_to_owned()?;
    Ok(dup)
}

impl Reregister for tokio::net::TcpStream {
    fn register_duplicate(&self) -> io::Result<Self> {
        let std = std::net::TcpStream::from(duplicate(self)?);
        // Invariant: the duplicate shares the open file (and its O_NONBLOCK flag) with the
        // registered original, so it is already non-blocking as tokio requires.
        tokio::net::TcpStream::from_std(std)
    }
}

impl Reregister for tokio::net::UnixStream {
    fn register_duplicate(&self) -> io::Result<Self> {
        let std = std::os::unix::net::UnixStream::from(duplicate(self)?);
        tokio::net::UnixStream::from_std(std)
    }
}

/// A socket that moves its registration to the runtime of whichever thread polls it, between
/// the bulk runtime and the others.
///
/// Invariant: no wake-up is lost by a move. A move happens at the start of a poll, on the
/// thread that polls; the old registration's pending interests are dropped with it, and the
/// relay's poll that follows asks again for every direction that is still waiting (a
/// [`crate::copy::Relay`] polls both directions on every wake-up), now on the new driver.
pub struct Following<S> {
    io: S,
    runtime: u8,
}

impl<S: Reregister> Following<S> {
    /// Wraps `io`, registered with the runtime of the calling thread.
    pub fn new(io: S) -> Self {
        Following {
            io,
            runtime: this_threads_runtime(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    pub fn into_inner(self) -> S {
        self.io
    }

    fn follow(&mut self) {
        let here = this_threads_runtime();
        if here == self.runtime {
            return;
        }
        // Outside a runtime (a poll from a plain thread) there is nothing to move to.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        match self.io.register_duplicate() {
            Ok(moved) => {
                // Dropping the old one deregisters it and closes its descriptor number; the
                // socket lives on in the duplicate.
                self.io = moved;
                self.runtime = here;
            }
            Err(e) => {
                // EMFILE and the like: stay where we are, which only costs the hand-over.
                tracing::debug!("a socket keeps its runtime: {e}");
                self.runtime = here;
            }
        }
    }
}

impl<S: AsRawFd> AsRawFd for Following<S> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.io.as_raw_fd()
    }
}

impl<S: Reregister + AsyncRead + Unpin> AsyncRead for Following<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.follow();
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: Reregister + AsyncWrite + Unpin> AsyncWrite for Following<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.follow();
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.follow();
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.follow();
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.follow();
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::runtime::{Builder, Runtime};

    fn runtime(bulk: bool) -> Runtime {
        let mut b = Builder::new_multi_thread();
        b.worker_threads(1).enable_all();
        if bulk {
            b.on_thread_start(|| mark_bulk_thread(1));
        }
        b.build().unwrap()
    }

    /// A socket registered with a runtime fails once that runtime is gone ("being shut down"),
    /// unless it moved: made on one runtime, dropped with it, then polled on a bulk runtime
    /// and back on a third, normal one, the stream still moves bytes both ways.
    #[test]
    fn a_stream_works_on_the_runtime_that_polls_it_after_its_first_one_is_gone() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let accepted = listener.accept().unwrap().0;
        accepted.set_nonblocking(true).unwrap();
        let first = runtime(false);
        let ours = first
            .block_on(async { Following::new(tokio::net::TcpStream::from_std(accepted).unwrap()) });
        let first_fd = ours.as_raw_fd();
        drop(first);

        peer.write_all(b"hello").unwrap();
        let bulk = runtime(true);
        let (mut ours, bulk_fd) = bulk
            .block_on(bulk.spawn(async move {
                let mut ours = ours;
                let mut buf = [0u8; 5];
                ours.read_exact(&mut buf).await.unwrap();
                ours.write_all(&buf).await.unwrap();
                let fd = ours.as_raw_fd();
                (ours, fd)
            }))
            .unwrap();
        let mut back = [0u8; 5];
        peer.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");
        assert_ne!(bulk_fd, first_fd, "registered again on the bulk runtime");
        drop(bulk);

        peer.write_all(b"again").unwrap();
        let normal = runtime(false);
        normal
            .block_on(normal.spawn(async move {
                let mut buf = [0u8; 5];
                ours.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"again");
                ours.write_all(b"bye").await.unwrap();
                ours.shutdown().await.unwrap();
            }))
            .unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye");
    }
}
