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

pub async fn tcp(mut client: UnixStream, remote: SocketAddr) -> Result<()> {
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(remote)).await;
    let mut stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let errno = e.raw_os_error().unwrap_or(libc::ECONNREFUSED);
            tracing::debug!(%remote, "connect failed: {e}");
            write_frame_async(&mut client, &ConnectReply::Failed { errno }).await?;
            return Ok(());
        }
        Err(_) => {
            write_frame_async(
                &mut client,
                &ConnectReply::Failed {
                    errno: libc::ETIMEDOUT,
                },
            )
            .await?;
            return Ok(());
        }
    };
    let _ = stream.set_nodelay(true);
    let reply = ConnectReply::Connected {
        local: stream.local_addr()?,
        remote: stream.peer_addr()?,
    };
    write_frame_async(&mut client, &reply).await?;
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut stream, RELAY_BUFFER, RELAY_BUFFER)
        .await?;
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
