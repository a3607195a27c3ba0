//! `pods/NAME/portforward?ports=P[,Q]` over WebSocket, subprotocol `v4.channel.k8s.io`, as
//! the kubelet serves it: every binary message starts with a channel byte; port i of the
//! request has data channel 2i and error channel 2i+1; the server's first message on each
//! channel is the port (2 bytes, little-endian). Each port connects to `127.0.0.1:PORT` inside
//! the pod's network namespace; a failure to connect is reported as text on the error channel.
//!
//! Backpressure: bytes from the client are written to the pod before the next message is
//! read, and bytes from the pod go through a small bounded queue to the WebSocket writer, so
//! a slow side slows the other instead of filling memory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};
use tokio_tungstenite::WebSocketStream;

use super::api::{full, status_response, Body, Query};
use super::{net, util, Sim};

pub(crate) const PROTOCOL: &str = "v4.channel.k8s.io";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from the pod per WebSocket message.
const CHUNK: usize = 32 * 1024;
/// Messages queued towards the WebSocket writer (per connection).
const QUEUE: usize = 8;

fn bad(message: &str) -> Response<Body> {
    status_response(util::status(400, "BadRequest", message, Value::Null))
}

pub(crate) async fn handle(
    sim: Arc<Sim>,
    req: Request<Incoming>,
    ns: String,
    pod: String,
    query: Query,
) -> Response<Body> {
    let mut ports = Vec::new();
    for value in query.all("ports") {
        for p in value.split(',').filter(|p| !p.is_empty()) {
            match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return bad(&format!("invalid port {p:?}")),
            }
        }
    }
    if ports.is_empty() {
        return bad("at least one port must be given (ports=P)");
    }
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if !header(hyper::header::UPGRADE).eq_ignore_ascii_case("websocket") {
        return bad("Upgrade request required");
    }
    let key = header(hyper::header::SEC_WEBSOCKET_KEY);
    if key.is_empty() {
        return bad("missing Sec-WebSocket-Key");
    }
    let offered = header(hyper::header::SEC_WEBSOCKET_PROTOCOL);
    if !offered.split(',').any(|p| p.trim() == PROTOCOL) {
        return bad(&format!(
            "unsupported port-forward subprotocol(s) {offered:?}: this server speaks {PROTOCOL}"
        ));
    }
    if sim.store.get("pods", &ns, &pod).is_none() {
        return status_response(util::not_found("pods", "pods", "", &pod));
    }
    let Some(netns) = sim.kubelet.netns(&ns, &pod) else {
        return bad(&format!(
            "pod {pod} is not running: unable to upgrade connection"
        ));
    };

    let mut drops = sim.faults.port_forward_drops();
    drops.borrow_and_update();
    let pod_name = pod.clone();
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("port-forward upgrade: {e}");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        tokio::select! {
            _ = relay(ws, netns, pod_name, ports) => {}
            // The "drop port-forwards" fault: the connection is cut without a close frame.
            _ = drops.changed() => {}
        }
    });

    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = derive_accept_key(key.as_bytes()).parse() {
        h.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(
        hyper::header::SEC_WEBSOCKET_PROTOCOL,
        hyper::header::HeaderValue::from_static(PROTOCOL),
    );
    resp
}

fn framed(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::binary(v)
}

/// Connects to `127.0.0.1:port` inside the pod's network namespace.
async fn connect_in_pod(netns: &str, port: u16) -> anyhow::Result<tokio::net::TcpStream> {
    let target = netns.to_owned();
    let connected = tokio::task::spawn_blocking(move || {
        net::in_netns(&target, move || {
            let s = std::net::TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                CONNECT_TIMEOUT,
            )?;
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            Ok(s)
        })
    })
    .await;
    match connected {
        Ok(Ok(s)) => tokio::net::TcpStream::from_std(s).map_err(anyhow::Error::from),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(e.into()),
    }
}

fn connect_error(port: u16, pod: &str, e: &anyhow::Error) -> String {
    format!(
        "error forwarding port {port} to pod {pod}: failed to connect to localhost:{port} inside \
         the pod's network namespace: {e:#}"
    )
}

async fn relay<S>(mut ws: WebSocketStream<S>, netns: String, pod: String, ports: Vec<u16>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // One port (what kubectl and mirrord ask for): a byte stream relayed like any other flow.
    if let [port] = ports[..] {
        let port_le = port.to_le_bytes();
        if ws.send(framed(0, &port_le)).await.is_err()
            || ws.send(framed(1, &port_le)).await.is_err()
        {
            return;
        }
        match connect_in_pod(&netns, port).await {
            Ok(stream) => {
                let channel = super::portforward_stream::DataChannel::new(ws);
                let stream = mirrord_relay::Following::new(stream);
                let _ = mirrord_relay::relay(channel, stream, CHUNK).await;
            }
            Err(e) => {
                let text = connect_error(port, &pod, &e);
                let _ = ws.send(framed(1, text.as_bytes())).await;
                let _ = ws.close(None).await;
            }
        }
        return;
    }
    let (mut ws_tx, mut ws_rx) = ws.split();
    // pod readers --framed bytes--> WebSocket writer
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if ws_tx.send(msg).await.is_err() {
                return;
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
        let _ = ws_tx.close().await;
    });

    // Dropping the relay (the "drop port-forwards" fault) stops its tasks too.
    let mut tasks = AbortOnDrop(vec![writer.abort_handle()]);
    let mut writers: Vec<Option<OwnedWriteHalf>> = Vec::new();
    let mut readers = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let port_le = port.to_le_bytes();
        if out_tx.send(framed(data_ch, &port_le)).await.is_err()
            || out_tx.send(framed(err_ch, &port_le)).await.is_err()
        {
            return;
        }
        match connect_in_pod(&netns, port).await {
            Ok(stream) => {
                let (mut rd, wr) = stream.into_split();
                writers.push(Some(wr));
                let out_tx = out_tx.clone();
                readers.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        match rd.read(&mut buf[1..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                buf[0] = data_ch;
                                let msg = Message::binary(Bytes::copy_from_slice(&buf[..=n]));
                                if out_tx.send(msg).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }));
            }
            Err(e) => {
                writers.push(None);
                let text = connect_error(port, &pod, &e);
                let _ = out_tx.send(framed(err_ch, text.as_bytes())).await;
            }
        }
    }

    let reader_aborts: Vec<_> = readers.iter().map(|r| r.abort_handle()).collect();
    tasks.0.extend(reader_aborts.iter().cloned());
    let pod_side_done = {
        let readers = std::mem::take(&mut readers);
        async move {
            for r in readers {
                let _ = r.await;
            }
        }
    };
    let client_side = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(data) if data.len() > 1 => {
                    let ch = data[0] as usize;
                    // Odd channels are error channels: nothing to do with client text there.
                    if !ch.is_multiple_of(2) {
                        continue;
                    }
                    let Some(Some(w)) = writers.get_mut(ch / 2) else {
                        continue;
                    };
                    if w.write_all(&data[1..]).await.is_err() {
                        writers[ch / 2] = None;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    // The session ends when the client goes or every pod connection has ended (then the
    // writer sends a close frame once the queue is drained).
    tokio::select! {
        _ = client_side => {}
        _ = pod_side_done => {}
    }
    for r in &reader_aborts {
        r.abort();
    }
    drop(out_tx);
    let _ = tokio::time::timeout(CONNECT_TIMEOUT, writer).await;
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
