//! A small JSON-RPC client for driving `mirrord-server` the way an IDE does.
//!
//! It runs a child process and talks JSON-RPC over the child's stdin/stdout, either with LSP
//! framing (`Content-Length: N\r\n\r\n` + body: `mirrord-server --stdio`) or one message per line
//! (the WebSocket bridge `ws_rpc`). A reader thread collects responses and notifications, and
//! answers the server's own requests (`window/workDoneProgress/create`, ...) with a `null`
//! result, as a client that supports them does.
//!
//! Every wait is bounded: [`RpcClient::request`] panics (failing the test, with the method and
//! the child's stderr) when no answer comes in time; [`RpcClient::wait_notification`] returns
//! `None`. The child runs in its own process group, which is SIGKILLed when the client drops.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// How a request waits for its answer unless told otherwise (agent starts included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How messages are delimited on the child's stdio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// LSP base protocol: `Content-Length` header, blank line, body.
    ContentLength,
    /// One JSON message per line.
    Lines,
}

#[derive(Default)]
struct Inbox {
    /// Answers to our requests (and error answers with `id: null`), in arrival order.
    responses: Vec<Value>,
    /// Notifications from the server, in arrival order.
    notifications: Vec<Value>,
    /// Requests the server sent us (answered with `null`).
    server_requests: Vec<Value>,
    /// Frames that were not JSON at all.
    garbage: Vec<String>,
    /// The child's stdout ended.
    closed: bool,
}

type Shared = Arc<(Mutex<Inbox>, Condvar)>;
type Writer = Arc<Mutex<Option<ChildStdin>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A JSON-RPC peer running as a child process; see the module docs.
pub struct RpcClient {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
    framing: Framing,
    writer: Writer,
    inbox: Shared,
    next_id: AtomicU64,
    stderr_log: PathBuf,
}

impl RpcClient {
    /// Spawns `cmd` (e.g. `cluster.dev(mirrord-server).arg("--stdio")`) with piped stdin and
    /// stdout; its stderr goes to `stderr_log`.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        framing: Framing,
        stderr_log: &Path,
    ) -> Result<RpcClient> {
        let stderr = std::fs::File::create(stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stdin = child.stdin.take().context("piped stdin")?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let writer: Writer = Arc::new(Mutex::new(Some(stdin)));
        let inbox: Shared = Arc::default();
        {
            let writer = writer.clone();
            let inbox = inbox.clone();
            std::thread::spawn(move || read_loop(stdout, framing, writer, inbox));
        }
        Ok(RpcClient {
            name: name.to_owned(),
            child,
            exited: None,
            framing,
            writer,
            inbox,
            next_id: AtomicU64::new(1),
            stderr_log: stderr_log.to_path_buf(),
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the child's stderr, for failure messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Writes one message body as a frame. Fails when stdin was closed or the child is gone.
    pub fn send_raw(&self, body: &[u8]) -> Result<()> {
        let mut w = lock(&self.writer);
        let stdin = w.as_mut().context("stdin is closed")?;
        write_frame(stdin, self.framing, body).context("writing to the server")
    }

    /// Writes `bytes` as they are, without framing (to test a server's framing errors).
    pub fn send_unframed(&self, bytes: &[u8]) -> Result<()> {
        let mut w = lock(&self.writer);
        let stdin = w.as_mut().context("stdin is closed")?;
        stdin.write_all(bytes)?;
        stdin.flush().context("writing to the server")
    }

    fn send(&self, msg: &Value) -> Result<()> {
        self.send_raw(msg.to_string().as_bytes())
    }

    /// Sends a request and returns its id (for [`RpcClient::wait_response`]).
    pub fn send_request(&self, method: &str, params: Value) -> Value {
        let id = json!(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut msg = json!({"jsonrpc": "2.0", "id": id, "method": method});
        // No params at all rather than `null` (JSON-RPC: params is a structured value if present).
        if !params.is_null() {
            msg["params"] = params;
        }
        if let Err(e) = self.send(&msg) {
            panic!("{}: sending {method}: {e:#}", self.name);
        }
        id
    }

    /// A request; `Ok(result)` or `Err(error object)`. Panics after [`REQUEST_TIMEOUT`].
    pub fn request(&self, method: &str, params: Value) -> Result<Value, Value> {
        self.request_within(method, params, REQUEST_TIMEOUT)
    }

    /// [`RpcClient::request`] with an explicit timeout.
    pub fn request_within(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, Value> {
        let id = self.send_request(method, params);
        match self.wait_response(&id, timeout) {
            Some(resp) => split_response(resp),
            None => panic!(
                "{}: no answer to {method} (id {id}) within {timeout:?}; stderr: {}",
                self.name,
                self.stderr_tail(20)
            ),
        }
    }

    /// A request that must succeed; panics with the error otherwise.
    pub fn call(&self, method: &str, params: Value) -> Value {
        match self.request(method, params) {
            Ok(v) => v,
            Err(e) => panic!("{}: {method} failed: {e}", self.name),
        }
    }

    /// Waits for (and removes) the response with `id` (`Value::Null` for parse errors).
    pub fn wait_response(&self, id: &Value, timeout: Duration) -> Option<Value> {
        self.wait_inbox(timeout, |inbox| {
            let at = inbox.responses.iter().position(|r| &r["id"] == id)?;
            Some(inbox.responses.remove(at))
        })
    }

    /// Sends a notification.
    pub fn notify(&self, method: &str, params: Value) {
        let mut msg = json!({"jsonrpc": "2.0", "method": method});
        if !params.is_null() {
            msg["params"] = params;
        }
        if let Err(e) = self.send(&msg) {
            panic!("{}: sending {method}: {e:#}", self.name);
        }
    }

    /// The first notification received so far or within `timeout` (older ones included) for
    /// which `pred` holds.
    pub fn wait_notification(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        self.wait_inbox(timeout, |inbox| {
            inbox.notifications.iter().find(|n| pred(n)).cloned()
        })
    }

    /// Every notification received so far.
    pub fn notifications(&self) -> Vec<Value> {
        lock(&self.inbox.0).notifications.clone()
    }

    /// Every request the server sent us so far.
    pub fn server_requests(&self) -> Vec<Value> {
        lock(&self.inbox.0).server_requests.clone()
    }

    /// Frames from the server that were not JSON.
    pub fn garbage(&self) -> Vec<String> {
        lock(&self.inbox.0).garbage.clone()
    }

    /// Whether the child's stdout has ended.
    pub fn output_closed(&self) -> bool {
        lock(&self.inbox.0).closed
    }

    /// Closes the child's stdin (an IDE going away).
    pub fn close_stdin(&self) {
        lock(&self.writer).take();
    }

    /// Waits up to `timeout` for the child to exit (polls every 10 ms).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited.is_none() {
                self.exited = self.child.try_wait().ok().flatten();
            }
            if self.exited.is_some() || Instant::now() >= deadline {
                return self.exited;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `take` on the inbox whenever it changes, until it returns `Some` or `timeout`
    /// passes (or the child's output ends without it).
    fn wait_inbox<T>(
        &self,
        timeout: Duration,
        mut take: impl FnMut(&mut Inbox) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.inbox;
        let mut inbox = lock(m);
        loop {
            if let Some(v) = take(&mut inbox) {
                return Some(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || inbox.closed {
                return None;
            }
            inbox = cv
                .wait_timeout(inbox, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        lock(&self.writer).take();
        if self.exited.is_none() && self.child.try_wait().ok().flatten().is_none() {
            if let Ok(pgid) = i32::try_from(self.child.id()) {
                // SAFETY: kill(2) of the process group we created (pgid > 1: a real child).
                if pgid > 1 {
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                }
            }
            let _ = self.child.wait();
        }
    }
}

/// `Ok(result)` or `Err(error)` of a response object.
pub fn split_response(resp: Value) -> Result<Value, Value> {
    match resp.get("error") {
        Some(e) => Err(e.clone()),
        None => Ok(resp.get("result").cloned().unwrap_or(Value::Null)),
    }
}

fn write_frame(w: &mut impl Write, framing: Framing, body: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(body.len() + 32);
    match framing {
        Framing::ContentLength => {
            frame.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            frame.extend_from_slice(body);
        }
        Framing::Lines => {
            frame.extend_from_slice(body);
            frame.push(b'\n');
        }
    }
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one frame body; `None` at end of stream.
fn read_frame(r: &mut impl BufRead, framing: Framing) -> Option<Vec<u8>> {
    match framing {
        Framing::Lines => {
            let mut line = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).ok()? == 0 {
                    return None;
                }
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                if !line.is_empty() {
                    return Some(line);
                }
            }
        }
        Framing::ContentLength => {
            let mut len: Option<usize> = None;
            loop {
                let mut header = String::new();
                if r.read_line(&mut header).ok()? == 0 {
                    return None;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    if len.is_some() {
                        break;
                    }
                    continue;
                }
                if let Some((k, v)) = header.split_once(':') {
                    if k.trim().eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().ok();
                    }
                }
            }
            let mut body = vec![0u8; len?];
            r.read_exact(&mut body).ok()?;
            Some(body)
        }
    }
}

fn read_loop(stdout: std::process::ChildStdout, framing: Framing, writer: Writer, inbox: Shared) {
    let mut r = BufReader::new(stdout);
    while let Some(body) = read_frame(&mut r, framing) {
        let (m, cv) = &*inbox;
        let msg: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                lock(m)
                    .garbage
                    .push(String::from_utf8_lossy(&body).into_owned());
                cv.notify_all();
                continue;
            }
        };
        let has_method = msg.get("method").is_some();
        let has_id = msg.get("id").is_some();
        if has_method && has_id {
            // A request from the server: a client that supports it says yes (null result).
            let reply = json!({"jsonrpc": "2.0", "id": msg["id"], "result": null});
            if let Some(w) = lock(&writer).as_mut() {
                let _ = write_frame(w, framing, reply.to_string().as_bytes());
            }
            lock(m).server_requests.push(msg);
        } else if has_method {
            lock(m).notifications.push(msg);
        } else {
            lock(m).responses.push(msg);
        }
        cv.notify_all();
    }
    lock(&inbox.0).closed = true;
    inbox.1.notify_all();
}
