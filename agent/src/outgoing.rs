//! Outgoing flows made from inside the target's network namespace.

use anyhow::Result;
use mirrord_protocol::agent::Datagram;
use mirrord_protocol::codec::{read_frame_async, write_frame_async};
use mirrord_protocol::net::{ConnectReply, UdpOpenReply};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpStream, UdpSocket, UnixStream};

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

/// Copies both directions of a flow until both end.
pub async fn splice<A, B>(a: &mut A, b: &mut B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::io::copy_bidirectional_with_sizes(a, b, RELAY_BUFFER, RELAY_BUFFER).await;
}

/// A TCP channel from the session: the connect reply, then the flow's bytes.
pub async fn tcp(mut client: UnixStream, remote: SocketAddr) -> Result<()> {
    let (stream, reply) = connect(remote).await;
    write_frame_async(&mut client, &reply).await?;
    if let Some(mut stream) = stream {
        splice(&mut client, &mut stream).await;
    }
    Ok(())
}

/// A UDP flow: one socket connected to `remote`; datagrams travel as frames on the channel.
pub async fn udp(client: UnixStream, remote: SocketAddr) -> Result<()> {
    let bind: SocketAddr = if remote.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let (mut reader, mut writer) = client.into_split();
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
