//! Run inside a mirrord session (`mirrord exec -- hostile_peer`): attacks the session's control
//! socket, its data listener and the agent's socket with wrong tokens and garbage, then checks
//! that the session still serves this very process. Prints one `ok: ...` line per check and exits
//! non-zero on the first failure.

use anyhow::{bail, Context, Result};
use mirrord_protocol::agent::{AgentChannel, AgentHello, AgentWelcome};
use mirrord_protocol::codec::{read_frame, write_frame};
use mirrord_protocol::layer::{
    DataReply, LayerControlRequest, LayerControlResponse, LayerHello, LayerRequest, ServerHello,
    ServerResponse,
};
use mirrord_protocol::net::Family;
use mirrord_protocol::PROTOCOL_VERSION;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn main() {
    if let Err(e) = run() {
        println!("FAILED: {e:#}");
        std::process::exit(1);
    }
}

fn env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set: run me under mirrord exec"))
}

/// The peer closes the connection: reads end-of-file (or a reset) within the timeout.
fn expect_closed(mut s: impl Read) -> Result<()> {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue, // a refusal frame may come first
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => return Ok(()),
            Err(e) => bail!("expected the peer to close, got {e}"),
        }
    }
}

fn control(path: &Path) -> Result<UnixStream> {
    let s = UnixStream::connect(path).with_context(|| format!("connecting {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

fn run() -> Result<()> {
    let proxy = env("MIRRORD_PROXY_ADDR")?;
    let token = env("MIRRORD_SESSION_TOKEN")?;
    let control_path = PathBuf::from(proxy.strip_prefix("unix:").context("unix: address")?);
    let mode = std::fs::metadata(&control_path)?.permissions().mode() & 0o777;
    if mode != 0o600 {
        bail!("control socket mode is {mode:o}, want 600");
    }
    println!("ok: control socket is 0600");

    // 1. Wrong token on the control socket.
    let mut s = control(&control_path)?;
    let hello = |token: &str| LayerHello::Control {
        version: PROTOCOL_VERSION,
        token: token.into(),
        pid: std::process::id(),
        executable: "hostile".into(),
    };
    write_frame(&mut s, &hello("0000"))?;
    match read_frame::<ServerHello, _>(&mut s)? {
        ServerHello::Refused { reason } => println!("ok: control refused a wrong token ({reason})"),
        other => bail!("control accepted a wrong token: {other:?}"),
    }
    expect_closed(&mut s)?;

    // 2. Garbage: an absurd frame length, then random bytes.
    let mut s = control(&control_path)?;
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])?;
    expect_closed(&mut s)?;
    let mut s = control(&control_path)?;
    s.write_all(&[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x99])?;
    expect_closed(&mut s)?;
    println!("ok: control closed connections that sent garbage");

    // 3. The right token still works, and yields the data listeners.
    let mut s = control(&control_path)?;
    write_frame(&mut s, &hello(&token))?;
    let data_addrs = match read_frame::<ServerHello, _>(&mut s)? {
        ServerHello::Welcome { data_addrs, .. } => data_addrs,
        other => bail!("control refused the right token: {other:?}"),
    };
    write_frame(
        &mut s,
        &LayerControlRequest {
            id: 7,
            request: LayerRequest::Resolve {
                name: "payment-service".into(),
                family: Family::V4,
            },
        },
    )?;
    match read_frame::<LayerControlResponse, _>(&mut s)? {
        LayerControlResponse {
            id: 7,
            response: ServerResponse::Resolved(Ok(r)),
        } => println!("ok: control still serves ({:?})", r.addresses),
        other => bail!("resolve after the attacks: {other:?}"),
    }

    // 4. The data listener: wrong token, garbage.
    let data: SocketAddr = *data_addrs.first().context("no data listener")?;
    let remote: SocketAddr = "10.96.0.50:8080".parse()?;
    let data_hello = |token: &str| LayerHello::Tcp {
        version: PROTOCOL_VERSION,
        token: token.into(),
        pid: std::process::id(),
        remote,
        hostname: None,
    };
    let tcp = || -> Result<TcpStream> {
        let s = TcpStream::connect(data)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(s)
    };
    let mut d = tcp()?;
    write_frame(&mut d, &data_hello("wrong"))?;
    match read_frame::<DataReply, _>(&mut d)? {
        DataReply::Refused { reason } => {
            println!("ok: data listener refused a wrong token ({reason})")
        }
        other => bail!("data listener accepted a wrong token: {other:?}"),
    }
    expect_closed(&mut d)?;
    let mut d = tcp()?;
    d.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    expect_closed(&mut d)?;
    println!("ok: data listener closed a connection that sent garbage");

    // 5. The agent's socket (next to the control socket): wrong token, garbage.
    let dir = control_path.parent().context("runtime dir")?;
    let session = env("MIRRORD_SESSION")?;
    let agent_path = dir.join(format!("{session}.agent.sock"));
    let mode = std::fs::metadata(&agent_path)?.permissions().mode() & 0o777;
    if mode != 0o600 {
        bail!("agent socket mode is {mode:o}, want 600");
    }
    let mut a = control(&agent_path)?;
    write_frame(
        &mut a,
        &AgentHello {
            version: PROTOCOL_VERSION,
            token: "not-the-token-at-all".into(),
            channel: AgentChannel::Tcp { remote },
        },
    )?;
    match read_frame::<AgentWelcome, _>(&mut a)? {
        AgentWelcome::Refused { reason } => println!("ok: agent refused a wrong token ({reason})"),
        other => bail!("agent accepted a wrong token: {other:?}"),
    }
    expect_closed(&mut a)?;
    let mut a = control(&agent_path)?;
    a.write_all(&[0x7f, 0xff, 0xff, 0xff])?;
    expect_closed(&mut a)?;
    let mut a = control(&agent_path)?;
    a.write_all(&[0, 0, 0, 3, 9, 9, 9])?;
    expect_closed(&mut a)?;
    println!("ok: agent closed connections that sent garbage");

    // 6. The whole path still works for this process (through the layer, server and agent).
    let mut http =
        TcpStream::connect("payment-service:8080").context("connect through the session")?;
    http.set_read_timeout(Some(Duration::from_secs(10)))?;
    http.write_all(b"GET / HTTP/1.0\r\nHost: payment-service\r\n\r\n")?;
    let mut body = String::new();
    http.read_to_string(&mut body)?;
    if !body.contains("payment-service: hello") {
        bail!("unexpected answer after the attacks: {body}");
    }
    println!("ok: the session still serves this process");
    Ok(())
}
