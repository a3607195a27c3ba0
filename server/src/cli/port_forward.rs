//! `mirrord port-forward`: `-L [LPORT:]HOST:PORT[/udp]` forwards a local port to a destination as
//! reached from inside the target (cluster names allowed); `-R [RPORT:]LPORT` delivers the
//! target's port RPORT to a local port (stolen, or mirrored with `--mirror`).

use crate::session::Session;
use anyhow::{bail, Context, Result};
use mirrord_protocol::agent::{AgentChannel, AgentRequest, AgentResponse, Datagram};
use mirrord_protocol::codec::{read_frame_async, write_frame_async};
use mirrord_protocol::net::{ConnectReply, Family, UdpOpenReply};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

/// One `-L` forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalForward {
    pub local_port: u16,
    pub host: String,
    pub port: u16,
    pub udp: bool,
}

/// One `-R` forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteForward {
    pub remote_port: u16,
    pub local_port: u16,
}

fn port(s: &str, what: &str) -> Result<u16> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("{what} {s:?} is not a port (1-65535)"))
}

impl std::str::FromStr for LocalForward {
    type Err = anyhow::Error;
    /// `[LPORT:]HOST:PORT[/udp]`; HOST may be an IPv6 address in brackets.
    fn from_str(spec: &str) -> Result<Self> {
        let (spec, udp) = match spec.strip_suffix("/udp") {
            Some(s) => (s, true),
            None => (spec.strip_suffix("/tcp").unwrap_or(spec), false),
        };
        let (front, remote_port) = spec
            .rsplit_once(':')
            .with_context(|| format!("-L {spec:?}: expected [LPORT:]HOST:PORT"))?;
        let remote_port = port(remote_port, "remote port")?;
        let (local_port, host) = if front.ends_with(']') {
            match front.rsplit_once(":[") {
                Some((l, h)) => (port(l, "local port")?, h.trim_end_matches(']').to_owned()),
                None => (
                    remote_port,
                    front
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                ),
            }
        } else {
            match front.split_once(':') {
                Some((l, h)) => (port(l, "local port")?, h.to_owned()),
                None => (remote_port, front.to_owned()),
            }
        };
        if host.is_empty() {
            bail!("-L {spec:?}: the host is empty");
        }
        Ok(LocalForward {
            local_port,
            host,
            port: remote_port,
            udp,
        })
    }
}

impl std::str::FromStr for RemoteForward {
    type Err = anyhow::Error;
    /// `[RPORT:]LPORT`
    fn from_str(spec: &str) -> Result<Self> {
        match spec.split_once(':') {
            Some((r, l)) => Ok(RemoteForward {
                remote_port: port(r, "remote port")?,
                local_port: port(l, "local port")?,
            }),
            None => {
                let p = port(spec, "port")?;
                Ok(RemoteForward {
                    remote_port: p,
                    local_port: p,
                })
            }
        }
    }
}

/// Sets up every forward; they run until the returned future is dropped.
pub async fn run(
    session: &Session,
    local: &[LocalForward],
    remote: &[RemoteForward],
) -> Result<()> {
    let mut tasks = Vec::new();
    for f in local {
        let bind: SocketAddr = ([127, 0, 0, 1], f.local_port).into();
        if f.udp {
            let socket = UdpSocket::bind(bind)
                .await
                .with_context(|| format!("binding {bind}/udp"))?;
            eprintln!(
                "forwarding 127.0.0.1:{}/udp -> {}:{}/udp (from the target)",
                f.local_port, f.host, f.port
            );
            tasks.push(tokio::spawn(udp_forward(
                session.shared.clone(),
                socket,
                f.clone(),
            )));
        } else {
            let listener = TcpListener::bind(bind)
                .await
                .with_context(|| format!("binding {bind}"))?;
            eprintln!(
                "forwarding 127.0.0.1:{} -> {}:{} (from the target)",
                f.local_port, f.host, f.port
            );
            tasks.push(tokio::spawn(tcp_forward(
                session.shared.clone(),
                listener,
                f.clone(),
            )));
        }
    }
    for r in remote {
        let local: SocketAddr = ([127, 0, 0, 1], r.local_port).into();
        session
            .shared
            .incoming
            .listen(&session.shared.control, 0, r.remote_port, local)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("-R {}:{}", r.remote_port, r.local_port))?;
        eprintln!(
            "forwarding the target's port {} -> 127.0.0.1:{}",
            r.remote_port, r.local_port
        );
    }
    // Readiness line for scripts and tests.
    println!("port-forward ready");
    std::future::pending::<()>().await;
    Ok(())
}

async fn tcp_forward(
    shared: Arc<crate::proxy::ProxyShared>,
    listener: TcpListener,
    f: LocalForward,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let f = f.clone();
        tokio::spawn(async move {
            let ip = match resolve_shared(&shared, &f.host).await {
                Ok(ip) => ip,
                Err(e) => {
                    eprintln!("mirrord: {e:#}");
                    return;
                }
            };
            let remote = SocketAddr::new(ip, f.port);
            let mut agent = match shared.connector.open(AgentChannel::Tcp { remote }).await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("mirrord: {e:#}");
                    return;
                }
            };
            match read_frame_async::<ConnectReply, _>(&mut agent).await {
                Ok(ConnectReply::Connected { .. }) => {
                    let _ = stream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut stream,
                        &mut agent,
                        256 * 1024,
                        256 * 1024,
                    )
                    .await;
                }
                Ok(ConnectReply::Failed { errno }) => {
                    eprintln!(
                        "mirrord: connecting to {remote} from the target failed: {}",
                        std::io::Error::from_raw_os_error(errno)
                    );
                }
                Err(e) => eprintln!("mirrord: {e}"),
            }
        });
    }
}

async fn resolve_shared(shared: &crate::proxy::ProxyShared, host: &str) -> Result<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    match shared
        .control
        .request(AgentRequest::Resolve {
            name: host.to_owned(),
            family: Family::Any,
        })
        .await?
    {
        AgentResponse::Resolved(Ok(r)) => r
            .addresses
            .iter()
            .find(|a| a.is_ipv4())
            .or(r.addresses.first())
            .copied()
            .with_context(|| format!("{host} has no address")),
        AgentResponse::Resolved(Err(e)) => bail!("cannot resolve {host} in the target: {e}"),
        other => bail!("unexpected agent answer {other:?}"),
    }
}

/// UDP: one flow in the target per local peer address.
async fn udp_forward(shared: Arc<crate::proxy::ProxyShared>, socket: UdpSocket, f: LocalForward) {
    let socket = Arc::new(socket);
    // local peer → that flow's sender of datagrams towards the target
    let mut flows: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let datagram = buf[..n].to_vec();
        if let Some(tx) = flows.get(&peer) {
            if tx.try_send(datagram.clone()).is_ok() {
                continue;
            }
            flows.remove(&peer);
        }
        let ip = match resolve_shared(&shared, &f.host).await {
            Ok(ip) => ip,
            Err(e) => {
                eprintln!("mirrord: {e:#}");
                continue;
            }
        };
        let remote = SocketAddr::new(ip, f.port);
        // local socket --datagrams--> flow task --frames--> agent
        let (datagram_tx, mut datagram_rx) = mpsc::channel::<Vec<u8>>(256);
        let _ = datagram_tx.try_send(datagram);
        flows.insert(peer, datagram_tx);
        let shared = shared.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            let Ok(mut agent) = shared
                .connector
                .open(AgentChannel::Udp { remote, dns: false })
                .await
            else {
                return;
            };
            match read_frame_async::<UdpOpenReply, _>(&mut agent).await {
                Ok(UdpOpenReply::Opened { .. }) => {}
                _ => return,
            }
            let (mut rx, mut tx) = tokio::io::split(agent);
            let back = tokio::spawn(async move {
                while let Ok(Datagram(payload)) = read_frame_async::<Datagram, _>(&mut rx).await {
                    let _ = socket.send_to(&payload, peer).await;
                }
            });
            while let Some(d) = datagram_rx.recv().await {
                if write_frame_async(&mut tx, &Datagram(d)).await.is_err() {
                    break;
                }
            }
            back.abort();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forwards() {
        let f: LocalForward = "9000:payment-service.payments:8080".parse().unwrap();
        assert_eq!(
            (f.local_port, f.host.as_str(), f.port, f.udp),
            (9000, "payment-service.payments", 8080, false)
        );
        let f: LocalForward = "echo:9001/udp".parse().unwrap();
        assert_eq!(
            (f.local_port, f.host.as_str(), f.port, f.udp),
            (9001, "echo", 9001, true)
        );
        let f: LocalForward = "7000:[fd00::1]:80".parse().unwrap();
        assert_eq!(
            (f.local_port, f.host.as_str(), f.port),
            (7000, "fd00::1", 80)
        );
        assert!("nohost".parse::<LocalForward>().is_err());
        assert!("1:host:0".parse::<LocalForward>().is_err());
        let r: RemoteForward = "80:8081".parse().unwrap();
        assert_eq!((r.remote_port, r.local_port), (80, 8081));
        let r: RemoteForward = "8080".parse().unwrap();
        assert_eq!((r.remote_port, r.local_port), (8080, 8080));
        assert!("x:1".parse::<RemoteForward>().is_err());
    }
}
