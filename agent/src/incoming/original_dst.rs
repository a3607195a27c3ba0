//! Where a redirected connection was going (`SO_ORIGINAL_DST`), and connections to the target
//! that the redirect leaves alone.

use crate::redirect;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// An IPv4 client on the dual-stack listener shows as `::ffff:a.b.c.d`; everyone downstream
/// (the program's `getpeername`, the traffic view) wants `a.b.c.d`.
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(
        mirrord_protocol::config::canonical_ip(addr.ip()),
        addr.port(),
    )
}

/// SO_ORIGINAL_DST (IPv4) / IP6T_SO_ORIGINAL_DST (IPv6): where the client meant to connect
/// before the redirect.
pub(super) fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let local = stream.local_addr().ok()?;
    let v6 = matches!(local, SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_none());
    // SAFETY: sockaddr_in/sockaddr_in6 are plain data; each length matches its buffer.
    unsafe {
        if v6 {
            let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            let r = libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                &mut addr as *mut _ as *mut libc::c_void,
                &mut len,
            );
            return (r == 0).then(|| {
                SocketAddr::new(
                    std::net::Ipv6Addr::from(addr.sin6_addr.s6_addr).into(),
                    u16::from_be(addr.sin6_port),
                )
            });
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let r = libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            &mut addr as *mut _ as *mut libc::c_void,
            &mut len,
        );
        (r == 0).then(|| {
            SocketAddr::new(
                std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)).into(),
                u16::from_be(addr.sin_port),
            )
        })
    }
}

/// A connection to the target that the redirect leaves alone (marked as the agent's own).
pub(super) async fn connect_unredirected(addr: SocketAddr) -> Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    redirect::mark_socket(socket.as_raw_fd()).context("marking the agent's socket")?;
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .context("connecting to the target timed out")?
        .with_context(|| format!("connecting to the target at {addr}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
