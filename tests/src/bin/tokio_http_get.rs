//! A minimal HTTP/1.1 client on tokio, for the end-to-end tests: `tokio_http_get HOST:PORT[/PATH]
//! ...` connects with `tokio::net::TcpStream::connect("HOST:PORT")` (which resolves with
//! `getaddrinfo` on a blocking thread and connects a non-blocking socket through epoll), sends
//! `GET PATH`, and prints each response body. Exits non-zero on any error or non-200 status.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn get(target: &str) -> Result<String, Error> {
    let (addr, path) = match target.find('/') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, "/"),
    };
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    eprintln!(
        "tokio_http_get: {addr}: connected, peer {}",
        stream.peer_addr()?
    );
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{target}: incomplete response {text:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("{target}: {status}").into());
    }
    Ok(body.to_owned())
}

#[tokio::main]
async fn main() {
    let targets: Vec<String> = std::env::args().skip(1).collect();
    if targets.is_empty() {
        eprintln!("usage: tokio_http_get HOST:PORT[/PATH]...");
        std::process::exit(2);
    }
    for target in &targets {
        match tokio::time::timeout(Duration::from_secs(20), get(target)).await {
            Ok(Ok(body)) => print!("{body}"),
            Ok(Err(e)) => {
                eprintln!("tokio_http_get: {e}");
                std::process::exit(1);
            }
            Err(_) => {
                eprintln!("tokio_http_get: {target}: timed out");
                std::process::exit(1);
            }
        }
    }
}
