//! A WebSocket ↔ stdio bridge for the daemon tests: connects to `mirrord-server --listen`,
//! sends every stdin line as one text message and prints every text message it receives as one
//! stdout line. The tests drive it with `mirrord_tests::lsp_client::RpcClient` (line framing),
//! started inside the dev namespace, where the daemon listens.
//!
//! usage: `ws_rpc URL`; the token, if any, comes from `$MIRRORD_SERVER_TOKEN` and is sent as
//! `Authorization: Bearer TOKEN`. If the server refuses the upgrade, prints
//! `{"handshake_status": CODE}` and exits 2. Exits 0 when stdin ends (after a close frame) or the
//! server closes.

use std::io::{BufRead, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, TryRecvError};
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::{Error, Message};

/// A connection attempt may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the loop looks at stdin while no message arrives.
const POLL: Duration = Duration::from_millis(10);

fn main() {
    std::process::exit(match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ws_rpc: {e}");
            1
        }
    });
}

fn run() -> Result<i32, String> {
    let url = std::env::args().nth(1).ok_or("usage: ws_rpc URL")?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad URL {url}: {e}"))?;
    if let Ok(token) = std::env::var("MIRRORD_SERVER_TOKEN") {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|e| format!("token: {e}"))?;
        request.headers_mut().insert("authorization", value);
    }
    let host = request.uri().host().ok_or("URL without a host")?.to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or("no address")?;
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut ws = match tungstenite::client(request, stream) {
        Ok((ws, _)) => ws,
        Err(HandshakeError::Failure(Error::Http(resp))) => {
            println!("{{\"handshake_status\": {}}}", resp.status().as_u16());
            return Ok(2);
        }
        Err(e) => return Err(format!("handshake: {e}")),
    };
    eprintln!("ws_rpc: connected to {url}");
    ws.get_ref()
        .set_read_timeout(Some(POLL))
        .map_err(|e| e.to_string())?;

    // stdin --lines--> the socket loop
    let (line_tx, line_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let stdout = std::io::stdout();
    loop {
        loop {
            match line_rx.try_recv() {
                Ok(line) => ws
                    .send(Message::text(line))
                    .map_err(|e| format!("send: {e}"))?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = ws.close(None);
                    let _ = ws.flush();
                    return Ok(0);
                }
            }
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                let mut out = stdout.lock();
                writeln!(out, "{}", text.as_str()).map_err(|e| e.to_string())?;
                out.flush().map_err(|e| e.to_string())?;
            }
            Ok(Message::Close(_)) | Err(Error::ConnectionClosed) => return Ok(0),
            Ok(_) => {}
            Err(Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}
