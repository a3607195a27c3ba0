//! `mirrord dump`: prints the traffic arriving at the target's ports while the target keeps
//! serving it. HTTP/1 is shown as request and response heads with a body preview; anything else
//! as escaped bytes. `--json` prints one `TrafficEvent` per line instead.

use crate::http_sniff::{escape, Head, Seen, Sniffer};
use crate::incoming::ObservedConnection;
use crate::session::Session;
use anyhow::{Context, Result};
use mirrord_protocol::agent::Observed;
use mirrord_protocol::api::{now_ms, TrafficEvent};
use mirrord_protocol::codec::read_frame_async;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

/// Bytes shown per chunk of a non-HTTP stream.
const RAW_PREVIEW: usize = 64;

/// Whole blocks of output, so concurrent connections do not interleave within a block.
struct Printer {
    json: bool,
    out: Mutex<std::io::Stdout>,
}

impl Printer {
    fn block(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    fn event(&self, event: &TrafficEvent) {
        if let Ok(line) = serde_json::to_string(event) {
            self.block(&format!("{line}\n"));
        }
    }
}

fn clock() -> String {
    let ms = now_ms();
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000
    )
}

pub async fn run(session: &Session, ports: &[u16], json: bool) -> Result<()> {
    // every observed port --connections--> this loop
    let (conn_tx, mut conn_rx) = mpsc::channel::<ObservedConnection>(256);
    for &port in ports {
        let mut rx = session
            .shared
            .incoming
            .observe(&session.shared.control, 0, port)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("watching port {port}"))?;
        let conn_tx = conn_tx.clone();
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                if conn_tx.send(c).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(conn_tx);
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    eprintln!(
        "mirrord dump: watching port(s) {} of {}; Ctrl-C to stop",
        list.join(", "),
        session.target
    );
    let printer = Arc::new(Printer {
        json,
        out: Mutex::new(std::io::stdout()),
    });
    while let Some(conn) = conn_rx.recv().await {
        let printer = printer.clone();
        tokio::spawn(async move { show(conn, printer).await });
    }
    anyhow::bail!("the agent stopped sending traffic (did it exit?)")
}

async fn show(mut conn: ObservedConnection, printer: Arc<Printer>) {
    let who = conn.peer.to_string();
    if printer.json {
        printer.event(&TrafficEvent::IncomingConnection {
            time: now_ms(),
            peer: who.clone(),
            port: conn.port,
            mode: "mirror".into(),
        });
    } else {
        printer.block(&format!(
            "[{}] {who} -> port {} connected\n",
            clock(),
            conn.port
        ));
    }
    let mut requests = Sniffer::new(true);
    let mut responses = Sniffer::new(false);
    // Requests still waiting for their response: (method, path, headers, when).
    let mut waiting: VecDeque<(
        String,
        String,
        std::collections::BTreeMap<String, String>,
        Instant,
    )> = VecDeque::new();
    let mut open = 2;
    while open > 0 {
        let Ok(Observed { from_client, data }) =
            read_frame_async::<Observed, _>(&mut conn.channel).await
        else {
            break;
        };
        if data.is_empty() {
            open -= 1;
            continue;
        }
        let (seen, is_http) = if from_client {
            let seen = requests.feed(&data);
            // The response parser must know which requests were HEAD (no body follows).
            responses
                .pending_methods
                .extend(requests.pending_methods.drain(..));
            (seen, requests.is_http())
        } else {
            (responses.feed(&data), responses.is_http())
        };
        if !is_http {
            if !printer.json {
                let arrow = if from_client { ">" } else { "<" };
                let shown = escape(&data[..data.len().min(RAW_PREVIEW)]);
                let more = if data.len() > RAW_PREVIEW { " ..." } else { "" };
                printer.block(&format!(
                    "[{}] {who} {arrow} {} bytes: \"{shown}\"{more}\n",
                    clock(),
                    data.len()
                ));
            }
            continue;
        }
        let mut text = String::new();
        for s in seen {
            match s {
                Seen::Head(Head::Request {
                    method,
                    path,
                    version,
                    headers,
                }) => {
                    if !printer.json {
                        text += &format!("[{}] {who} > {method} {path} {version}\n", clock());
                        for (k, v) in &headers {
                            text += &format!("    {k}: {v}\n");
                        }
                    }
                    waiting.push_back((method, path, headers, Instant::now()));
                }
                Seen::Head(Head::Response {
                    status,
                    reason,
                    version,
                    headers,
                }) => {
                    if !printer.json {
                        text += &format!("[{}] {who} < {version} {status} {reason}\n", clock());
                        for (k, v) in &headers {
                            text += &format!("    {k}: {v}\n");
                        }
                    }
                    if status >= 200 {
                        if let Some((method, path, req_headers, since)) = waiting.pop_front() {
                            if printer.json {
                                printer.event(&TrafficEvent::IncomingRequest {
                                    time: now_ms(),
                                    port: conn.port,
                                    method,
                                    path,
                                    headers: req_headers,
                                    status,
                                    duration_ms: since.elapsed().as_millis() as u64,
                                    mode: "mirror".into(),
                                    matched_filter: None,
                                });
                            }
                        }
                    }
                }
                Seen::Body(b) => {
                    if !printer.json {
                        text += &format!("    | {}\n", escape(&b));
                    }
                }
            }
        }
        if !text.is_empty() {
            printer.block(&text);
        }
    }
    // Requests whose response never came (the connection closed first).
    if printer.json {
        for (method, path, headers, since) in waiting {
            printer.event(&TrafficEvent::IncomingRequest {
                time: now_ms(),
                port: conn.port,
                method,
                path,
                headers,
                status: 0,
                duration_ms: since.elapsed().as_millis() as u64,
                mode: "mirror".into(),
                matched_filter: None,
            });
        }
    } else {
        printer.block(&format!(
            "[{}] {who} -> port {} closed\n",
            clock(),
            conn.port
        ));
    }
}
