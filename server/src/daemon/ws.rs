//! The WebSocket transport: the same `mirrord/*` methods with jsonrpsee, traffic as a
//! subscription. Loopback only; every client must present the token the daemon wrote to a 0600
//! file in the runtime dir (header `Authorization: Bearer TOKEN`, or `?token=TOKEN` for
//! browsers, which cannot set headers on a WebSocket).

use super::{ApiError, ClientId, Daemon, Notifier, Progress};
use anyhow::{bail, Context, Result};
use jsonrpsee::core::SubscriptionResult;
use jsonrpsee::server::middleware::rpc::RpcServiceT;
use jsonrpsee::server::{
    HttpBody, HttpResponse, RpcModule, RpcServiceBuilder, Server, SubscriptionMessage,
};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use jsonrpsee::{ConnectionId, Extensions, PendingSubscriptionSink};
use mirrord_protocol::api::*;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use tokio::sync::mpsc;

/// Notifications for one WebSocket connection, collected until its traffic subscription drains
/// them.
struct WsNotifier {
    /// daemon --notifications--> the connection's subscription task
    note_tx: mpsc::Sender<serde_json::Value>,
}

impl WsNotifier {
    fn push<T: serde::Serialize>(&self, method: &str, params: T) {
        if let Ok(params) = serde_json::to_value(params) {
            let _ = self
                .note_tx
                .try_send(serde_json::json!({"method": method, "params": params}));
        }
    }
}

impl Notifier for WsNotifier {
    fn traffic(&self, n: TrafficNotification) {
        self.push("mirrord/traffic", n);
    }
    fn session_changed(&self, n: SessionChanged) {
        self.push("mirrord/sessionChanged", n);
    }
    fn progress(&self, token: &str, step: Progress) {
        let (kind, message) = match step {
            Progress::Begin(m) => ("begin", m),
            Progress::Report(m) => ("report", m),
            Progress::End(m) => ("end", m),
        };
        self.push(
            "$/progress",
            serde_json::json!({"token": token, "kind": kind, "message": message}),
        );
    }
}

struct Connection {
    notifier: Arc<WsNotifier>,
    note_rx: Option<mpsc::Receiver<serde_json::Value>>,
}

struct WsContext {
    daemon: Arc<Daemon>,
    connections: Mutex<HashMap<usize, Connection>>,
}

impl WsContext {
    /// A WebSocket connection ended: its notification queue goes, and so do its sessions.
    async fn connection_gone(&self, conn: usize) {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn);
        self.daemon.client_gone(client_id(conn)).await;
    }

    fn connection(&self, id: usize) -> Arc<WsNotifier> {
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        conns
            .entry(id)
            .or_insert_with(|| {
                let (note_tx, note_rx) = mpsc::channel(4096);
                Connection {
                    notifier: Arc::new(WsNotifier { note_tx }),
                    note_rx: Some(note_rx),
                }
            })
            .notifier
            .clone()
    }
}

/// WebSocket clients get ids far from the stdio client's 0.
fn client_id(conn: usize) -> ClientId {
    1_000_000 + conn as u64
}

fn api_err(e: ApiError) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(1, e.message.clone(), Some(e.data()))
}

fn parse<T: serde::de::DeserializeOwned>(params: &Params<'_>) -> Result<T, ErrorObjectOwned> {
    // Methods whose parameters are all optional also accept no parameters at all.
    let raw = params.as_str().unwrap_or("{}");
    serde_json::from_str(raw)
        .map_err(|e| ErrorObjectOwned::owned(-32602, format!("invalid params: {e}"), None::<()>))
}

fn conn_of(ext: &Extensions) -> usize {
    ext.get::<ConnectionId>().map(|c| c.0).unwrap_or(0)
}

fn module(ctx: Arc<WsContext>) -> Result<RpcModule<WsContext>> {
    let mut m = RpcModule::from_arc(ctx);
    m.register_async_method("mirrord/listTargets", |p, ctx, _| async move {
        ctx.daemon.list_targets(parse(&p)?).await.map_err(api_err)
    })?;
    m.register_async_method("mirrord/verifyConfig", |p, ctx, _| async move {
        Ok::<_, ErrorObjectOwned>(ctx.daemon.verify_config(parse(&p)?))
    })?;
    m.register_async_method("mirrord/startSession", |p, ctx, ext| async move {
        let conn = conn_of(&ext);
        let notifier = ctx.connection(conn);
        ctx.daemon
            .start_session(client_id(conn), notifier, parse(&p)?)
            .await
            .map_err(api_err)
    })?;
    m.register_async_method("mirrord/stopSession", |p, ctx, _| async move {
        ctx.daemon.stop_session(parse(&p)?).await.map_err(api_err)
    })?;
    m.register_async_method("mirrord/listSessions", |_p, ctx, _| async move {
        Ok::<_, ErrorObjectOwned>(ctx.daemon.list_sessions())
    })?;
    m.register_async_method("mirrord/trafficHistory", |p, ctx, _| async move {
        ctx.daemon.traffic_history(parse(&p)?).map_err(api_err)
    })?;
    // Every notification of this connection (traffic, sessionChanged, progress) as one
    // subscription; its end is the connection's end, which also ends its sessions.
    m.register_subscription(
        "mirrord/subscribe",
        "mirrord/notification",
        "mirrord/unsubscribe",
        |_p, pending: PendingSubscriptionSink, ctx, ext| async move {
            let conn = conn_of(&ext);
            ctx.connection(conn);
            let rx = ctx
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&conn)
                .and_then(|c| c.note_rx.take());
            let Some(mut rx) = rx else {
                pending
                    .reject(ErrorObjectOwned::owned(2, "already subscribed", None::<()>))
                    .await;
                return Ok(());
            };
            let sink = pending.accept().await?;
            loop {
                tokio::select! {
                    note = rx.recv() => {
                        let Some(note) = note else { break };
                        let msg = SubscriptionMessage::from_json(&note)?;
                        if sink.send(msg).await.is_err() {
                            break;
                        }
                    }
                    _ = sink.closed() => break,
                }
            }
            ctx.connection_gone(conn).await;
            SubscriptionResult::Ok(())
        },
    )?;
    Ok(m)
}

/// Set on the upgrade request of a WebSocket connection; jsonrpsee hands the upgrade request's
/// extensions to every call of the connection, which is how [`ConnectionEnd`] tells a WebSocket
/// connection from a plain HTTP request.
#[derive(Clone, Copy)]
struct WsConnection;

/// RPC middleware: jsonrpsee makes one per WebSocket connection (and one per plain HTTP
/// request) and drops it when the connection ends. Its drop ends the connection's sessions, so
/// a client that goes away without ever subscribing does not leave its agents running.
#[derive(Clone)]
struct ConnectionEndLayer {
    ctx: Arc<WsContext>,
}

impl<S> tower::Layer<S> for ConnectionEndLayer {
    type Service = ConnectionEnd<S>;
    fn layer(&self, inner: S) -> ConnectionEnd<S> {
        ConnectionEnd {
            inner,
            ctx: self.ctx.clone(),
            conn: std::sync::OnceLock::new(),
        }
    }
}

struct ConnectionEnd<S> {
    inner: S,
    ctx: Arc<WsContext>,
    /// The WebSocket connection, learnt from its first call.
    conn: std::sync::OnceLock<usize>,
}

impl<'a, S: RpcServiceT<'a>> RpcServiceT<'a> for ConnectionEnd<S> {
    type Future = S::Future;

    fn call(&self, request: jsonrpsee::types::Request<'a>) -> S::Future {
        if request.extensions().get::<WsConnection>().is_some() {
            let _ = self.conn.set(conn_of(request.extensions()));
        }
        self.inner.call(request)
    }
}

impl<S> Drop for ConnectionEnd<S> {
    fn drop(&mut self) {
        let Some(&conn) = self.conn.get() else { return };
        let ctx = self.ctx.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tracing::info!(conn, "WebSocket client gone; ending its sessions");
                ctx.connection_gone(conn).await;
            });
        }
    }
}

/// Refuses HTTP/WebSocket requests without the token.
#[derive(Clone)]
struct TokenLayer {
    token: Arc<str>,
}

impl<S> tower::Layer<S> for TokenLayer {
    type Service = TokenCheck<S>;
    fn layer(&self, inner: S) -> TokenCheck<S> {
        TokenCheck {
            inner,
            token: self.token.clone(),
        }
    }
}

#[derive(Clone)]
struct TokenCheck<S> {
    inner: S,
    token: Arc<str>,
}

fn presented_token<B>(req: &http::Request<B>) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v.strip_prefix("Bearer ").map(str::to_owned);
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_owned)
}

impl<S, B> tower::Service<http::Request<B>> for TokenCheck<S>
where
    S: tower::Service<http::Request<B>, Response = HttpResponse>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if presented_token(&req).is_some_and(|t| mirrord_protocol::token_eq(&t, &self.token)) {
            let upgrade = req
                .headers()
                .get(http::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            if upgrade {
                req.extensions_mut().insert(WsConnection);
            }
            Box::pin(self.inner.call(req))
        } else {
            tracing::warn!("refused a WebSocket client without the token");
            let resp = http::Response::builder()
                .status(http::StatusCode::UNAUTHORIZED)
                .body(HttpBody::from("missing or wrong token\n"))
                // Built from constant parts that are always valid.
                .expect("static response");
            Box::pin(async move { Ok(resp) })
        }
    }
}

/// Writes a fresh random token to `<runtime dir>/server.token` (0600) and returns it.
pub fn write_token(runtime_dir: &Path) -> Result<(String, PathBuf)> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow::anyhow!("random token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = runtime_dir.join("server.token");
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, token.as_bytes())?;
    Ok((token, path))
}

/// Serves the daemon over WebSocket on a loopback address until the process ends.
pub async fn serve_ws(daemon: Arc<Daemon>, addr: SocketAddr, token: String) -> Result<()> {
    if !addr.ip().is_loopback() {
        bail!("--listen must be a loopback address (127.0.0.1 or ::1), not {addr}");
    }
    let ctx = Arc::new(WsContext {
        daemon,
        connections: Mutex::new(HashMap::new()),
    });
    let server = Server::builder()
        .set_http_middleware(tower::ServiceBuilder::new().layer(TokenLayer {
            token: token.into(),
        }))
        .set_rpc_middleware(RpcServiceBuilder::new().layer(ConnectionEndLayer { ctx: ctx.clone() }))
        .build(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let bound = server.local_addr()?;
    let handle = server.start(module(ctx)?);
    // Readiness line for whoever started us.
    println!("mirrord-server listening on ws://{bound}");
    handle.stopped().await;
    Ok(())
}
