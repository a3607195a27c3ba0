//! Outgoing flows made from inside the target's network namespace.

use crate::incoming::BoxIo;
use anyhow::Result;
use mirrord_protocol::agent::Datagram;
use mirrord_protocol::codec::{read_frame_async, write_frame_async};
use mirrord_protocol::net::{ConnectReply, UdpOpenReply};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpStream, UdpSocket};

/// Longer than any answer a live peer gives, shorter than the kernel's two minutes of SYN retries,
/// so a program connecting to a black hole gets `ETIMEDOUT` in reasonable time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Relay buffer per direction: large enough that a bulk transfer moves in big chunks.
const RELAY_BUFFER: usize = 256 * 1024;

/// Connects to `remote` from the pod: the stream, and the reply the program gets.
pub async fn connect(remote: SocketAddr) -> (Option<TcpStream>, ConnectReply) {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(remote)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            match (stream.local_addr(), stream.peer_addr()) {
                (Ok(local), Ok(remote)) => {
                    (Some(stream), ConnectReply::Connected { local, remote })
                }
                // Reset between connect and the address lookups: as good as refused.
                _ => (
                    None,
                    ConnectReply::Failed {
                        errno: libc::ECONNRESET,
                    },
                ),
            }
        }
        Ok(Err(e)) => {
            tracing::debug!(%remote, "connect failed: {e}");
            let errno = e.raw_os_error().unwrap_or(libc::ECONNREFUSED);
            (None, ConnectReply::Failed { errno })
        }
        Err(_) => (
            None,
            ConnectReply::Failed {
                errno: libc::ETIMEDOUT,
            },
        ),
    }
}

/// Relays two TCP sockets in the kernel: each direction moves socket → pipe → socket with
/// splice(2), so the bytes never cross into user space (the agent's CPU per byte is what limits
/// bulk transfers). Ends when both directions have ended, or at the first error.
pub async fn splice_tcp(a: &TcpStream, b: &TcpStream) {
    let _ = tokio::try_join!(splice_one_way(a, b), splice_one_way(b, a));
}

/// Bytes per splice call; the pipe is grown to hold that much.
const SPLICE_CHUNK: usize = 256 * 1024;

async fn splice_one_way(from: &TcpStream, to: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use tokio::io::Interest;
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody else.
    let (pipe_r, pipe_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: plain fcntl on our own pipe; failing leaves the default size, which also works.
    unsafe {
        libc::fcntl(
            pipe_w.as_raw_fd(),
            libc::F_SETPIPE_SZ,
            SPLICE_CHUNK as libc::c_int,
        )
    };
    let splice = |from: i32, to: i32, len: usize| -> std::io::Result<usize> {
        // SAFETY: both descriptors are open for the duration of the call; no offsets.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    };
    loop {
        // The pipe is empty here: a WouldBlock can only mean the socket has nothing to read.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe_w.as_raw_fd(), SPLICE_CHUNK)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // Pass the half-close on, as copy_bidirectional would.
            // SAFETY: shutdown of a socket we hold a reference to.
            unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe_r.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A TCP channel from the session: the connect reply, then the flow's bytes.
pub async fn tcp(mut client: BoxIo, remote: SocketAddr) -> Result<()> {
    let (stream, reply) = connect(remote).await;
    write_frame_async(&mut client, &reply).await?;
    if let Some(stream) = stream {
        // A download continues on the relay's bulk threads, behind other flows' requests.
        let stream = mirrord_relay::Following::new(stream);
        let _ = mirrord_relay::relay(client, stream, RELAY_BUFFER).await;
    }
    Ok(())
}

/// A UDP flow: one socket connected to `remote`; datagrams travel as frames on the channel.
pub async fn udp(client: BoxIo, remote: SocketAddr) -> Result<()> {
    let bind: SocketAddr = if remote.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let (mut reader, mut writer) = tokio::io::split(client);
    let socket = match open_udp(bind, remote).await {
        Ok(s) => s,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
            write_frame_async(&mut writer, &UdpOpenReply::Failed { errno }).await?;
            return Ok(());
        }
    };
    write_frame_async(
        &mut writer,
        &UdpOpenReply::Opened {
            local: socket.local_addr()?,
            remote,
        },
    )
    .await?;
    let socket = std::sync::Arc::new(socket);
    let receiving = socket.clone();
    // pod socket --datagrams--> channel
    let downstream = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            match receiving.recv(&mut buf).await {
                Ok(n) => {
                    if write_frame_async(&mut writer, &Datagram(buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                // ECONNREFUSED from an ICMP port unreachable: keep the flow, like a real
                // connected UDP socket would on the next send.
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => continue,
                Err(_) => break,
            }
        }
    });
    // channel --datagrams--> pod socket
    while let Ok(Datagram(payload)) = read_frame_async::<Datagram, _>(&mut reader).await {
        let _ = socket.send(&payload).await;
    }
    downstream.abort();
    Ok(())
}

async fn open_udp(bind: SocketAddr, remote: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(remote).await?;
    Ok(socket)
}
