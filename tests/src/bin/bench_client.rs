//! The load client (and tiny HTTP server) of the benchmark suite (`src/bin/bench.rs`). The same
//! binary runs in every variant (in the pod, in dev under `mirrord exec`, behind socat or
//! proxychains), so the only thing that differs between variants is the path the bytes take.
//!
//! Every subcommand times its own work (after its warm-up, which is the same for every variant),
//! prints one JSON line on stdout and exits; every loop is bounded in count and in time.
//!
//! ```text
//! bench_client http ADDR PATH N WARMUP keepalive|newconn   latency of N small GETs (µs)
//! bench_client bulk ADDR PATH STREAMS                      GET PATH on STREAMS connections at once
//! bench_client dns NAME N WARMUP                           getaddrinfo(NAME) latency (µs)
//! bench_client conns ADDR N [HOLD_FILE]                    N concurrent echo connections
//! bench_client rps ADDR N CONNS HEADER                     keep-alive req/s, every other request
//!                                                          carrying HEADER
//! bench_client loaded ADDR BULK_PATH GETS N WARMUP         keep-alive latency alone (N requests),
//!                                                          then while a second connection GETs
//!                                                          BULK_PATH GETS times in a row
//! bench_client paced ADDR RATE SECS CONNS                 GETs at RATE req/s for SECS seconds over
//!                                                          CONNS keep-alive connections
//! bench_client first-byte ADDR PATH                        prints `first-byte` on the first byte
//! bench_client loopback N WARMUP                           loopback connect/accept/close loop
//! bench_client serve PORT NAME                             HTTP/1.1 keep-alive server
//! ```
//!
//! `ADDR` is `HOST:PORT`; the name is resolved once, before any timing (DNS has its own
//! subcommand).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// No single subcommand may run longer than this (the bench kills it a bit later anyway).
const DEADLINE: Duration = Duration::from_secs(120);
/// Socket timeout for every read and write: a stuck peer fails the request, never the bench.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    // Every process is bounded in time, the server too (the bench stops it long before).
    let lifetime = if a.first() == Some(&"serve") {
        Duration::from_secs(1800)
    } else {
        DEADLINE + Duration::from_secs(30)
    };
    std::thread::spawn(move || {
        std::thread::sleep(lifetime);
        eprintln!("bench_client: ran longer than {lifetime:?}, exiting");
        std::process::exit(3);
    });
    let result = match a.as_slice() {
        ["http", addr, path, n, warmup, mode] => http(addr, path, num(n), num(warmup), mode),
        ["bulk", addr, path, streams] => bulk(addr, path, num(streams)),
        ["dns", name, n, warmup] => dns(name, num(n), num(warmup)),
        ["conns", addr, n] => conns(addr, num(n), None),
        ["conns", addr, n, hold] => conns(addr, num(n), Some(PathBuf::from(hold))),
        ["rps", addr, n, conns, header] => rps(addr, num(n), num(conns), header),
        ["loaded", addr, bulk_path, gets, n, warmup] => {
            loaded(addr, bulk_path, num(gets), num(n), num(warmup))
        }
        ["paced", addr, rate, secs, conns] => paced(addr, num(rate), num(secs), num(conns)),
        ["first-byte", addr, path] => first_byte(addr, path),
        ["loopback", n, warmup] => loopback(num(n), num(warmup)),
        ["serve", port, name] => serve(num(port) as u16, name),
        _ => {
            eprintln!("usage: see the module docs of tests/src/bin/bench_client.rs");
            std::process::exit(2);
        }
    };
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("bench_client: {e}");
            std::process::exit(1);
        }
    }
}

fn num(s: &str) -> usize {
    s.parse().unwrap_or_else(|_| {
        eprintln!("bench_client: not a number: {s}");
        std::process::exit(2)
    })
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| format!("{addr}: no address").into())
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

fn request(host: &str, path: &str, close: bool, header: Option<&str>) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    if close {
        r.push_str("Connection: close\r\n");
    }
    if let Some(h) = header {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// A response's status, `x-served-by` and body length; the body is read (into `sink` when
/// given, else discarded in chunks).
struct Response {
    status: u16,
    served_by: String,
    body_len: u64,
}

fn read_response(r: &mut BufReader<TcpStream>) -> Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err("connection closed before a response".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut length: Option<u64> = None;
    let mut served_by = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err("connection closed in the headers".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok();
            } else if k.eq_ignore_ascii_case("x-served-by") {
                served_by = v.trim().to_owned();
            }
        }
    }
    let length = length.ok_or("no Content-Length")?;
    let mut left = length;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(format!("body ended {left} bytes short").into());
        }
        left -= n as u64;
    }
    Ok(Response {
        status,
        served_by,
        body_len: length,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency_summary(mut us: Vec<f64>, errors: usize, extra: Value) -> Value {
    us.sort_by(f64::total_cmp);
    let mean = us.iter().sum::<f64>() / us.len().max(1) as f64;
    let mut v = json!({
        "n": us.len(),
        "errors": errors,
        "p50_us": percentile(&us, 50.0),
        "p99_us": percentile(&us, 99.0),
        "mean_us": mean,
        "min_us": us.first().copied().unwrap_or(f64::NAN),
        "max_us": us.last().copied().unwrap_or(f64::NAN),
    });
    if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        v.extend(extra.clone());
    }
    v
}

/// The pause before each request of `newconn-paced`.
const NEWCONN_PACE: Duration = Duration::from_millis(20);

/// Sequential small GETs, on one keep-alive connection or one new connection each.
fn http(addr: &str, path: &str, n: usize, warmup: usize, mode: &str) -> Result<Value> {
    let keepalive = match mode {
        "keepalive" => true,
        "newconn" | "newconn-paced" => false,
        _ => return Err(format!("mode {mode}: keepalive, newconn or newconn-paced").into()),
    };
    // A program that opens a connection now and then (not counted in the samples), rather than
    // a storm of them back to back.
    let pace = (mode == "newconn-paced").then_some(NEWCONN_PACE);
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let target = resolve(addr)?;
    let req = request(host, path, false, None);
    let start = Instant::now();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut samples = Vec::with_capacity(n);
    let mut errors = 0;
    let mut first_error = None;
    for i in 0..warmup + n {
        if start.elapsed() > DEADLINE {
            return Err(format!("deadline passed after {i} requests").into());
        }
        if let Some(pace) = pace {
            std::thread::sleep(pace);
        }
        let t = Instant::now();
        let one = (|| -> Result<()> {
            let c = match conn.as_mut() {
                Some(c) if keepalive => c,
                _ => conn.insert(BufReader::new(connect(target)?)),
            };
            c.get_mut().write_all(&req)?;
            let resp = read_response(c)?;
            if resp.status != 200 {
                return Err(format!("status {}", resp.status).into());
            }
            Ok(())
        })();
        let dt = t.elapsed();
        if !keepalive {
            conn = None;
        }
        match one {
            Ok(()) if i >= warmup => samples.push(dt.as_secs_f64() * 1e6),
            Ok(()) => {}
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
                conn = None;
            }
        }
    }
    Ok(latency_summary(
        samples,
        errors,
        json!({ "first_error": first_error }),
    ))
}

/// `streams` connections GET `path` at the same time; throughput of all of them together.
fn bulk(addr: &str, path: &str, streams: usize) -> Result<Value> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let target = resolve(addr)?;
    let req = request(&host, path, true, None);
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let bytes = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..streams {
            let (req, errors, bytes) = (&req, errors.clone(), bytes.clone());
            s.spawn(move || {
                let r = (|| -> Result<u64> {
                    let mut c = BufReader::with_capacity(256 * 1024, connect(target)?);
                    c.get_mut().write_all(req)?;
                    let resp = read_response(&mut c)?;
                    if resp.status != 200 {
                        return Err(format!("status {}", resp.status).into());
                    }
                    Ok(resp.body_len)
                })();
                match r {
                    Ok(n) => {
                        bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => errors.lock().unwrap().push(e.to_string()),
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let bytes = bytes.load(Ordering::Relaxed);
    let errors = errors.lock().unwrap().clone();
    Ok(json!({
        "streams": streams,
        "bytes": bytes,
        "secs": secs,
        "mib_s": bytes as f64 / (1024.0 * 1024.0) / secs,
        "errors": errors.len(),
        "first_error": errors.first(),
    }))
}

/// One keep-alive request on `c` (reconnecting to `target` when `c` is empty), timed from the
/// request's write to the answer's last byte.
fn timed_request(
    c: &mut Option<BufReader<TcpStream>>,
    target: SocketAddr,
    req: &[u8],
) -> Result<Duration> {
    let t = Instant::now();
    let r = (|| -> Result<()> {
        let conn = match c.as_mut() {
            Some(conn) => conn,
            None => c.insert(BufReader::new(connect(target)?)),
        };
        conn.get_mut().write_all(req)?;
        let resp = read_response(conn)?;
        if resp.status != 200 {
            return Err(format!("status {}", resp.status).into());
        }
        Ok(())
    })();
    match r {
        Ok(()) => Ok(t.elapsed()),
        Err(e) => {
            *c = None;
            Err(e)
        }
    }
}

/// Head-of-line blocking between flows: the p99 of small keep-alive requests alone, then while
/// another connection of the same process downloads `gets` × `bulk_path` back to back (one
/// keep-alive connection). Only requests that finished while the download was in flight (after
/// its first request was written, before its last byte) count as "during".
fn loaded(addr: &str, bulk_path: &str, gets: usize, n: usize, warmup: usize) -> Result<Value> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let target = resolve(addr)?;
    let req = request(&host, "/", false, None);
    let start = Instant::now();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut alone = Vec::with_capacity(n);
    let mut errors = Vec::<String>::new();
    for i in 0..warmup + n {
        if start.elapsed() > DEADLINE / 4 {
            return Err(format!("deadline passed after {i} requests alone").into());
        }
        match timed_request(&mut conn, target, &req) {
            Ok(dt) if i >= warmup => alone.push(dt.as_secs_f64() * 1e6),
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    // 0: not started, 1: first headers read (in flight), 2: finished (or failed).
    let phase = AtomicU64::new(0);
    let mut during = Vec::new();
    let bulk_req = request(&host, bulk_path, false, None);
    let (bulk, bulk_secs) = std::thread::scope(|s| {
        let bulk = s.spawn(|| {
            let r = (|| -> Result<(u64, f64)> {
                let mut c = BufReader::with_capacity(256 * 1024, connect(target)?);
                let mut bytes = 0;
                let mut t0 = None;
                for _ in 0..gets {
                    c.get_mut().write_all(&bulk_req)?;
                    let t = Instant::now();
                    let _ = phase.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst);
                    let resp = read_response(&mut c)?;
                    if resp.status != 200 {
                        return Err(format!("status {}", resp.status).into());
                    }
                    t0.get_or_insert(t);
                    bytes += resp.body_len;
                }
                let secs = t0.map_or(0.0, |t0| t0.elapsed().as_secs_f64());
                Ok((bytes, secs))
            })();
            phase.store(2, Ordering::SeqCst);
            r
        });
        // Invariant: "during" samples start once the download's first request is out (the
        // first ones may precede its first byte by a round trip: a request or two of hundreds)
        // and stop at its last byte.
        while phase.load(Ordering::SeqCst) == 0 {
            if start.elapsed() > DEADLINE {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        let mut k = 0;
        while phase.load(Ordering::SeqCst) == 1 && k < 1_000_000 {
            if start.elapsed() > DEADLINE {
                errors.push("deadline passed during the download".into());
                break;
            }
            k += 1;
            match timed_request(&mut conn, target, &req) {
                Ok(dt) if phase.load(Ordering::SeqCst) == 1 => during.push(dt.as_secs_f64() * 1e6),
                Ok(_) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        match bulk.join() {
            Ok(Ok((b, secs))) => (b, secs),
            Ok(Err(e)) => {
                errors.push(format!("download: {e}"));
                (0, 0.0)
            }
            Err(_) => {
                errors.push("download thread panicked".into());
                (0, 0.0)
            }
        }
    });
    alone.sort_by(f64::total_cmp);
    during.sort_by(f64::total_cmp);
    let p99_alone = percentile(&alone, 99.0);
    let p99_during = percentile(&during, 99.0);
    Ok(json!({
        "n_alone": alone.len(),
        "n_during": during.len(),
        "p50_alone_us": percentile(&alone, 50.0),
        "p99_alone_us": p99_alone,
        "p50_during_us": percentile(&during, 50.0),
        "p99_during_us": p99_during,
        "max_during_us": during.last().copied().unwrap_or(f64::NAN),
        "p99_ratio": p99_during / p99_alone,
        "bulk_bytes": bulk,
        "bulk_secs": bulk_secs,
        "bulk_mib_s": bulk as f64 / (1024.0 * 1024.0) / bulk_secs,
        "errors": errors.len(),
        "first_error": errors.first(),
    }))
}

/// getaddrinfo(name) latency (std's `to_socket_addrs` calls glibc's getaddrinfo).
fn dns(name: &str, n: usize, warmup: usize) -> Result<Value> {
    let start = Instant::now();
    let mut samples = Vec::with_capacity(n);
    let mut errors = 0;
    let mut first = None;
    for i in 0..warmup + n {
        if start.elapsed() > DEADLINE {
            return Err(format!("deadline passed after {i} lookups").into());
        }
        let t = Instant::now();
        let r = (name, 0u16).to_socket_addrs().map(|a| a.count());
        let dt = t.elapsed();
        match r {
            Ok(k) if k > 0 => {
                if i >= warmup {
                    samples.push(dt.as_secs_f64() * 1e6);
                }
                first.get_or_insert(k);
            }
            _ => errors += 1,
        }
    }
    Ok(latency_summary(
        samples,
        errors,
        json!({ "answers": first }),
    ))
}

/// `n` connections to an echo service, all open at the same time: each connects, waits until
/// every other connect finished, then sends 16 bytes and reads them back. With `hold`, waits
/// (at most 30 s) for that file to exist before exiting (so the bench can read peak RSS of
/// the processes serving the connections while they still exist).
fn conns(addr: &str, n: usize, hold: Option<PathBuf>) -> Result<Value> {
    let target = resolve(addr)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let barrier = Arc::new(tokio::sync::Barrier::new(n));
        let start = Instant::now();
        let connected_at = Arc::new(Mutex::new(Vec::<Duration>::new()));
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let barrier = barrier.clone();
            let connected_at = connected_at.clone();
            tasks.push(tokio::spawn(async move {
                let c = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(target))
                    .await
                    .map_err(|_| "connect timed out".to_string())
                    .and_then(|r| r.map_err(|e| format!("connect: {e}")));
                if c.is_ok() {
                    connected_at.lock().unwrap().push(start.elapsed());
                }
                // Everyone waits, failed or not, so the barrier always opens.
                barrier.wait().await;
                let mut s = c?;
                let msg = format!("hello {i:>10}\n");
                let echo = async {
                    s.write_all(msg.as_bytes()).await?;
                    let mut back = vec![0u8; msg.len()];
                    s.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(back)
                };
                match tokio::time::timeout(IO_TIMEOUT, echo).await {
                    Ok(Ok(back)) if back == msg.as_bytes() => Ok(()),
                    Ok(Ok(_)) => Err("echo mismatch".to_string()),
                    Ok(Err(e)) => Err(format!("echo: {e}")),
                    Err(_) => Err("echo timed out".to_string()),
                }
            }));
        }
        let mut errors = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("task: {e}")),
            }
        }
        let total = start.elapsed();
        let connects = connected_at.lock().unwrap().clone();
        let all_connected = connects.iter().max().copied().unwrap_or_default();
        json!({
            "n": n,
            "connected": connects.len(),
            "errors": errors.len(),
            "first_error": errors.first(),
            "connect_secs": all_connected.as_secs_f64(),
            "total_secs": total.as_secs_f64(),
        })
    });
    if let Some(hold) = hold {
        // The summary first: the bench reads it, samples the servers, then creates the file.
        println!("{result}");
        std::io::stdout().flush()?;
        let t = Instant::now();
        while !hold.exists() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::process::exit(0);
    }
    Ok(result)
}

/// Keep-alive requests per second over `conns` connections; every other request carries
/// `header` (so a header-filtered steal routes half of them each way).
fn rps(addr: &str, n: usize, conns: usize, header: &str) -> Result<Value> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let target = resolve(addr)?;
    let by = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let start = Instant::now();
    std::thread::scope(|s| {
        for k in 0..conns {
            let (host, by, errors) = (&host, by.clone(), errors.clone());
            s.spawn(move || {
                let mut conn: Option<BufReader<TcpStream>> = None;
                for i in (k..n).step_by(conns) {
                    if start.elapsed() > DEADLINE {
                        errors.lock().unwrap().push("deadline".into());
                        return;
                    }
                    let h = (i % 2 == 0).then_some(header);
                    let req = request(host, &format!("/rps/{i}"), false, h);
                    let r = (|| -> Result<String> {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => conn.insert(BufReader::new(connect(target)?)),
                        };
                        c.get_mut().write_all(&req)?;
                        let resp = read_response(c)?;
                        if resp.status != 200 {
                            return Err(format!("status {}", resp.status).into());
                        }
                        Ok(resp.served_by)
                    })();
                    match r {
                        Ok(b) => *by.lock().unwrap().entry(b).or_default() += 1,
                        Err(e) => {
                            conn = None;
                            errors.lock().unwrap().push(e.to_string());
                        }
                    }
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let errors = errors.lock().unwrap().clone();
    let by = by.lock().unwrap().clone();
    let ok: u64 = by.values().sum();
    Ok(json!({
        "n": n,
        "ok": ok,
        "errors": errors.len(),
        "first_error": errors.first(),
        "secs": secs,
        "rps": ok as f64 / secs,
        "by": by,
    }))
}

/// GETs `/paced/<i>` at `rate` requests per second for `secs` seconds, spread over `conns`
/// keep-alive connections, each with its own schedule (request k of a connection is due at
/// `k * conns / rate` s); a connection that falls behind sends at once, so `rps` says what was
/// really offered. At most 60 s.
fn paced(addr: &str, rate: usize, secs: usize, conns: usize) -> Result<Value> {
    if rate == 0 || conns == 0 || secs == 0 || secs > 60 {
        return Err("paced: RATE and CONNS > 0, 0 < SECS <= 60".into());
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let target = resolve(addr)?;
    let n = rate * secs;
    let interval = Duration::from_secs_f64(conns as f64 / rate as f64);
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let start = Instant::now();
    std::thread::scope(|s| {
        for k in 0..conns {
            let (host, ok, errors) = (&host, ok.clone(), errors.clone());
            s.spawn(move || {
                let mut conn: Option<BufReader<TcpStream>> = None;
                for (j, i) in (k..n).step_by(conns).enumerate() {
                    let due = start + interval * j as u32;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if start.elapsed() > DEADLINE {
                        errors.lock().unwrap().push("deadline".into());
                        return;
                    }
                    let req = request(host, &format!("/paced/{i}"), false, None);
                    let r = (|| -> Result<()> {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => conn.insert(BufReader::new(connect(target)?)),
                        };
                        c.get_mut().write_all(&req)?;
                        let resp = read_response(c)?;
                        if resp.status != 200 {
                            return Err(format!("status {}", resp.status).into());
                        }
                        Ok(())
                    })();
                    match r {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            conn = None;
                            errors.lock().unwrap().push(e.to_string());
                        }
                    }
                }
            });
        }
    });
    let secs_taken = start.elapsed().as_secs_f64();
    let errors = errors.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    Ok(json!({
        "n": n,
        "ok": ok,
        "errors": errors.len(),
        "first_error": errors.first(),
        "secs": secs_taken,
        "rps": ok as f64 / secs_taken,
    }))
}

/// Resolves, connects, sends a GET and prints `first-byte` as soon as the first byte of the
/// answer arrives; then reads the answer to its end.
fn first_byte(addr: &str, path: &str) -> Result<Value> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let target = resolve(addr)?;
    let mut s = connect(target)?;
    s.write_all(&request(host, path, true, None))?;
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    println!("first-byte");
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok(json!({ "bytes": rest.len() + 1 }))
}

/// A loopback connect/accept loop: listen on 127.0.0.1:0; each iteration connects, accepts,
/// sends one byte each way and closes both ends.
fn loopback(n: usize, warmup: usize) -> Result<Value> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        if start.elapsed() > DEADLINE {
            return Err(format!("deadline passed after {i} iterations").into());
        }
        let t = Instant::now();
        let mut c = TcpStream::connect(addr)?;
        let (mut a, _) = listener.accept()?;
        c.write_all(b"x")?;
        let mut b = [0u8; 1];
        a.read_exact(&mut b)?;
        a.write_all(b"y")?;
        c.read_exact(&mut b)?;
        drop(c);
        drop(a);
        if i >= warmup {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let total: f64 = samples.iter().sum();
    Ok(latency_summary(
        samples,
        0,
        json!({ "total_secs": total / 1e6 }),
    ))
}

/// HTTP/1.1 keep-alive server: one thread per connection, every request answered with
/// `x-served-by: NAME` and the body `NAME: GET PATH\n` in one write. Request bodies are not
/// supported (the bench sends GETs). Prints one JSON line `{"listening": .., "pid": ..}`.
fn serve(port: u16, name: &str) -> Result<Value> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    println!(
        "{}",
        json!({"listening": listener.local_addr()?.to_string(), "pid": std::process::id()})
    );
    std::io::stdout().flush()?;
    let name: Arc<str> = Arc::from(name);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.clone();
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let mut w = match conn.try_clone() {
                Ok(w) => w,
                Err(_) => return,
            };
            let mut r = BufReader::new(conn);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_owned();
                let path = parts.next().unwrap_or("").to_owned();
                let mut close = false;
                let mut hline = String::new();
                loop {
                    hline.clear();
                    match r.read_line(&mut hline) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let h = hline.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if h.eq_ignore_ascii_case("connection: close") {
                        close = true;
                    }
                }
                let body = format!("{name}: {method} {path}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nx-served-by: {name}\r\nContent-Type: text/plain\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if w.write_all(resp.as_bytes()).is_err() || close {
                    return;
                }
            }
        });
    }
    Ok(json!({}))
}
