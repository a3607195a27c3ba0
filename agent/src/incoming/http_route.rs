//! Filtered steal: a redirected connection served as HTTP (hyper, HTTP/1.1 and h2, upgrades),
//! each request routed to the first stealer whose filter matches it, or onwards (the next agent,
//! else the target).

use super::filter::matches;
use super::sniff::Prefixed;
use super::tls::PodTls;
use super::{BoxIo, Hop, IncomingState, Subscriber};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::body::Incoming as IncomingBody;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mirrord_protocol::agent::{AgentEvent, AgentMessage, TrafficMode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

type Body = BoxBody<Bytes, hyper::Error>;

impl IncomingState {
    /// Serves the connection as HTTP and routes each request. On a TLS port `stream` is the
    /// decrypted client, and `pod` how to reach the target again over TLS, with the first such
    /// connection (already made, to learn the target's protocol).
    pub(super) async fn route_http<S>(
        self: &Arc<Self>,
        stream: Prefixed<S>,
        hop: Hop,
        stealers: Vec<Subscriber>,
        pod: Option<(PodTls, BoxIo)>,
    ) -> Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (pod_tls, first_pod) = match pod {
            Some((tls, first)) => (Some(tls), Some(first)),
            None => (None, None),
        };
        let router = Arc::new(Router {
            incoming: self.clone(),
            peer: hop.peer,
            original: hop.original,
            port: hop.port,
            visited: hop.visited,
            stealers,
            upstreams: tokio::sync::Mutex::new(HashMap::new()),
            pod_tls,
            first_pod: std::sync::Mutex::new(first_pod),
        });
        let service = hyper::service::service_fn(move |req| {
            let router = router.clone();
            async move { Ok::<_, std::convert::Infallible>(router.handle(req).await) }
        });
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

/// Where a request was sent, for reusing connections within one client connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Upstream {
    /// Onwards: the next agent, or the target.
    Target,
    Client(u64),
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Sender {
    async fn send(&mut self, req: Request<Body>) -> hyper::Result<Response<IncomingBody>> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// Routes the requests of one client connection.
struct Router {
    incoming: Arc<IncomingState>,
    peer: SocketAddr,
    original: SocketAddr,
    port: u16,
    /// The agents that had their turn with this connection (this one included).
    visited: Vec<String>,
    stealers: Vec<Subscriber>,
    upstreams: tokio::sync::Mutex<HashMap<Upstream, Sender>>,
    /// On a TLS port: the target is reached over TLS again.
    pod_tls: Option<PodTls>,
    /// On a TLS port: the connection to the target made before the client's handshake.
    first_pod: std::sync::Mutex<Option<BoxIo>>,
}

impl Router {
    async fn handle(&self, mut req: Request<IncomingBody>) -> Response<Body> {
        let stealer = self
            .stealers
            .iter()
            .find(|s| matches(s.filter.as_deref(), &req))
            .cloned();
        let upgrade = req.headers().contains_key(hyper::header::UPGRADE);
        let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| req.uri().path().to_owned());
        let started = std::time::Instant::now();
        // What the traffic view shows of a stolen request; sent once the response head is back.
        let report = stealer.as_ref().map(|s| {
            let headers = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect::<Vec<_>>();
            (
                s.client.traffic_tx.clone(),
                headers,
                s.filter.as_ref().map(|f| f.describe()),
            )
        });
        let key = match &stealer {
            Some(s) => Upstream::Client(s.client.id),
            None => Upstream::Target,
        };
        let http2 = req.version() == hyper::Version::HTTP_2;
        let req = req.map(|b| b.boxed());
        let response = self
            .forward(key, stealer.as_ref(), http2, upgrade, req)
            .await;
        let code = response.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
        if let Some((events_tx, headers, filter)) = report {
            // try_send: the traffic view must never hold up a request.
            events_tx.send(AgentMessage::Event(AgentEvent::HttpRequest {
                mode: TrafficMode::Steal,
                port: self.port,
                method: method.clone(),
                path: path.clone(),
                headers,
                status: code,
                duration_ms: started.elapsed().as_millis() as u64,
                filter,
            }));
        }
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%method, %path, "forwarding failed: {e:#}");
                return status(StatusCode::BAD_GATEWAY);
            }
        };
        if let (Some(down), true) = (
            down_upgrade,
            response.status() == StatusCode::SWITCHING_PROTOCOLS,
        ) {
            let up = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                if let (Ok(down), Ok(up)) = (down.await, up.await) {
                    let mut down = TokioIo::new(down);
                    let mut up = TokioIo::new(up);
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
        response.map(|b| b.boxed())
    }

    async fn forward(
        &self,
        key: Upstream,
        stealer: Option<&Subscriber>,
        http2: bool,
        upgrade: bool,
        req: Request<Body>,
    ) -> Result<Response<IncomingBody>> {
        let mut upstreams = self.upstreams.lock().await;
        // A connection that carried an upgrade is no longer HTTP; HTTP/1 connections also die.
        let usable = match upstreams.get(&key) {
            Some(Sender::H1(s)) => !s.is_closed() && !upgrade,
            Some(Sender::H2(s)) => !s.is_closed(),
            None => false,
        };
        if !usable {
            let sender = self.connect(stealer, http2).await?;
            upstreams.insert(key, sender);
        }
        // Present: inserted just above when it was missing or unusable.
        let sender = upstreams.get_mut(&key).expect("upstream present");
        if let Sender::H2(s) = sender {
            // HTTP/2 multiplexes: send without holding the map, so streams run concurrently.
            let mut s = s.clone();
            drop(upstreams);
            s.ready().await?;
            return Ok(s.send_request(req).await?);
        }
        Ok(sender.send(req).await?)
    }

    async fn connect(&self, stealer: Option<&Subscriber>, http2: bool) -> Result<Sender> {
        match stealer {
            Some(s) => {
                let channel = self
                    .incoming
                    .stolen_channel(&s.client, self.port, self.peer, self.original)
                    .await
                    .context("the stealing client did not pick the connection up")?;
                handshake(TokioIo::new(channel), http2).await
            }
            None => {
                let first = self
                    .first_pod
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                if let Some(stream) = first {
                    return handshake(TokioIo::new(stream), http2).await;
                }
                let stream = self
                    .incoming
                    .next_hop(self.port, self.peer, self.original, &self.visited)
                    .await?;
                match &self.pod_tls {
                    Some(tls) => {
                        let stream = tls
                            .connector
                            .connect(tls.server_name.clone(), stream)
                            .await
                            .context("TLS handshake with the target")?;
                        handshake(TokioIo::new(stream), http2).await
                    }
                    None => handshake(TokioIo::new(stream), http2).await,
                }
            }
        }
    }
}

async fn handshake<T>(io: TokioIo<T>, http2: bool) -> Result<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if http2 {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Sender::H1(sender))
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r
}
