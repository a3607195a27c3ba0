//! The HTTPS server and the REST routing: authentication, discovery, RBAC faults, and the
//! verbs (get, list, watch, create, update, patch, delete) on the stored objects, with
//! Kubernetes `Status` objects for errors.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::resources::{self, Resource};
use super::selector::{FieldSelector, LabelSelector};
use super::{jobs, kubelet, net, portforward, services, table, util, Sim};

/// Response bodies: whole JSON documents, or streams (watch, log follow).
pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;
/// Largest request body accepted.
const MAX_BODY: usize = 4 << 20;
/// A watch without `timeoutSeconds` ends after this long (clients re-watch).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
const LOG_POLL: Duration = Duration::from_millis(50);

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn json_response(code: u16, value: &Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A `Status` object as the response, with its `code` as the HTTP status.
pub(crate) fn status_response(status: Value) -> Response<Body> {
    let code = status["code"].as_u64().unwrap_or(500) as u16;
    json_response(code, &status)
}

fn bad_request(message: &str) -> Value {
    util::status(400, "BadRequest", message, Value::Null)
}

fn method_not_allowed() -> Value {
    util::status(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        Value::Null,
    )
}

/// Binds the API's listening socket on the loopback of the developer's namespace.
pub(crate) async fn bind_in_dev(sim: &Arc<Sim>) -> Result<TcpListener> {
    let ns = sim.net.ns_dev.clone();
    let listener = tokio::task::spawn_blocking(move || {
        net::in_netns(&ns, || {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
    })
    .await
    .context("bind task")??;
    TcpListener::from_std(listener).context("registering the API listener")
}

/// Accepts TLS connections and serves HTTP/1.1 (with upgrades for port-forward) on each.
pub(crate) async fn serve(
    sim: Arc<Sim>,
    listener: TcpListener,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // The "API down" fault: the connection is closed before a byte is read.
        if sim.faults.api_is_down() {
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let (acceptor, sim) = (acceptor.clone(), sim.clone());
        let mut downs = sim.faults.api_downs();
        downs.borrow_and_update();
        // A port-forward that carries a download moves its socket to the relay's bulk runtime.
        let tcp = mirrord_relay::Following::new(tcp);
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let sim = sim.clone();
                async move { Ok::<_, Infallible>(handle(sim, req).await) }
            });
            // A client that sends garbage loses its connection only.
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::select! {
                _ = conn => {}
                // The "API down" fault cuts the connections open at that moment.
                _ = downs.changed() => {}
            }
        });
    }
}

/// Decoded query parameters, in order (a name may repeat).
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true") | Some("1"))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One API request.
pub(crate) async fn handle(sim: Arc<Sim>, req: Request<Incoming>) -> Response<Body> {
    let latency = sim.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == sim.token);
    if !authorized {
        return status_response(util::status(
            401,
            "Unauthorized",
            "Unauthorized",
            Value::Null,
        ));
    }
    let path = req.uri().path().to_string();
    tracing::debug!(method = %req.method(), uri = %req.uri(), "API request");
    let query = Query::parse(req.uri().query());
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let found = |v: Option<Value>| match v {
        Some(v) => json_response(200, &v),
        None => status_response(util::status(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Value::Null,
        )),
    };
    match segs.as_slice() {
        ["version"] => found(Some(resources::version())),
        ["api"] => found(Some(resources::core_versions())),
        ["apis"] => found(Some(resources::group_list())),
        ["api", v] => found(resources::resource_list("", v)),
        ["apis", g] => found(resources::group(g)),
        ["apis", g, v] => found(resources::resource_list(g, v)),
        ["api", v, rest @ ..] => {
            let (v, rest) = (v.to_string(), owned(rest));
            resource_request(sim, req, "", &v, &rest, query).await
        }
        ["apis", g, v, rest @ ..] => {
            let (g, v, rest) = (g.to_string(), v.to_string(), owned(rest));
            resource_request(sim, req, &g, &v, &rest, query).await
        }
        _ => found(None),
    }
}

fn owned(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// What RBAC calls the request's verb.
fn verb_of(method: &Method, name: Option<&str>, sub: Option<&str>, query: &Query) -> &'static str {
    if sub == Some("portforward") {
        return "create";
    }
    match (method, name) {
        (&Method::GET, None) if query.flag("watch") => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, None) => "deletecollection",
        (&Method::DELETE, Some(_)) => "delete",
        _ => "unknown",
    }
}

async fn resource_request(
    sim: Arc<Sim>,
    req: Request<Incoming>,
    group: &str,
    version: &str,
    rest: &[String],
    query: Query,
) -> Response<Body> {
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let (ns, plural, name, sub) = match rest.as_slice() {
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 => (
            Some(*ns),
            *plural,
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, Some(*name), None),
        [plural, name, sub] => (None, *plural, Some(*name), Some(*sub)),
        _ => (None, "", None, None),
    };
    let not_found = || {
        status_response(util::status(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Value::Null,
        ))
    };
    let Some(r) = resources::find(group, version, plural) else {
        return not_found();
    };
    if (r.namespaced && ns.is_none() && name.is_some()) || (!r.namespaced && ns.is_some()) {
        return not_found();
    }
    if sub.is_some_and(|s| !r.subresources.contains(&s)) {
        return not_found();
    }
    let ns = ns.unwrap_or("");

    let verb = verb_of(req.method(), name, sub, &query);
    let rbac_resource = match sub {
        Some(s) => format!("{}/{s}", r.plural),
        None => r.plural.to_string(),
    };
    if sim.faults.is_forbidden(verb, &rbac_resource, ns) {
        let subject = match name {
            Some(n) if sub.is_some() || verb != "create" => format!("{} \"{n}\"", r.qualified()),
            _ => r.qualified(),
        };
        let scope = if ns.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{ns}\"")
        };
        let message = format!(
            "{subject} is forbidden: User \"{}\" cannot {verb} resource \"{rbac_resource}\" in \
             API group \"{}\" {scope}",
            sim.user, r.group
        );
        return status_response(util::status(
            403,
            "Forbidden",
            &message,
            json!({"name": name.unwrap_or(""), "group": r.group, "kind": r.plural}),
        ));
    }

    let method = req.method().clone();
    match (sub, name, &method) {
        (Some("portforward"), Some(name), _) => {
            portforward::handle(sim, req, ns.to_string(), name.to_string(), query).await
        }
        (Some("log"), Some(name), &Method::GET) => log(sim, ns, name, &query).await,
        (Some("ephemeralcontainers"), Some(name), &Method::GET)
        | (Some("status"), Some(name), &Method::GET)
        | (None, Some(name), &Method::GET) => match sim.store.get(r.plural, ns, name) {
            Some(obj) if sub.is_none() && table::wanted(&accept(&req)) => {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                json_response(200, &table::table(r, &[obj], rv))
            }
            Some(obj) => json_response(200, &obj),
            None => status_response(util::not_found(&r.qualified(), r.plural, r.group, name)),
        },
        (Some("ephemeralcontainers"), Some(name), &Method::PUT)
        | (Some("ephemeralcontainers"), Some(name), &Method::PATCH) => {
            let content_type = content_type(&req);
            let body = match read_json(req).await {
                Ok(b) => b,
                Err(s) => return status_response(s),
            };
            match ephemeral(&sim, ns, name, &method, &content_type, body) {
                Ok(pod) => json_response(200, &pod),
                Err(s) => status_response(s),
            }
        }
        (None, None, &Method::GET) => {
            if query.flag("watch") {
                watch(sim, r, ns, &query)
            } else {
                let as_table = table::wanted(&accept(&req));
                list(&sim, r, ns, &query, as_table)
            }
        }
        (None, None, &Method::POST) => {
            let body = match read_json(req).await {
                Ok(b) => b,
                Err(s) => return status_response(s),
            };
            if query.get("dryRun").is_some() {
                return json_response(201, &body);
            }
            match create_object(&sim, r, ns, body).await {
                Ok(obj) => json_response(201, &obj),
                Err(s) => status_response(s),
            }
        }
        (None, Some(name), &Method::DELETE) => {
            let name = name.to_string();
            let mut policy = query.get("propagationPolicy").map(str::to_string);
            if let Ok(body) = read_json(req).await {
                if let Some(p) = body["propagationPolicy"].as_str() {
                    policy = Some(p.to_string());
                }
            }
            let cascade = matches!(policy.as_deref(), Some("Background" | "Foreground"));
            match delete_object(&sim, r, ns, &name, cascade).await {
                Ok(obj) => json_response(200, &obj),
                Err(s) => status_response(s),
            }
        }
        (None | Some("status"), Some(name), &Method::PATCH | &Method::PUT) => {
            let content_type = content_type(&req);
            let body = match read_json(req).await {
                Ok(b) => b,
                Err(s) => return status_response(s),
            };
            match update(
                &sim,
                r,
                ns,
                name,
                sub.is_some(),
                &method,
                &content_type,
                body,
            ) {
                Ok(obj) => json_response(200, &obj),
                Err(s) => status_response(s),
            }
        }
        _ => status_response(method_not_allowed()),
    }
}

fn accept(req: &Request<Incoming>) -> String {
    req.headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn content_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string()
}

/// The request body as JSON (an empty body is `null`).
async fn read_json(req: Request<Incoming>) -> Result<Value, Value> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| bad_request(&format!("reading the request body: {e}")))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| bad_request(&format!("invalid JSON body: {e}")))
}

fn selectors(query: &Query) -> Result<(LabelSelector, FieldSelector), Value> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
        .map_err(|e| bad_request(&format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
        .map_err(|e| bad_request(&e))?;
    Ok((labels, fields))
}

fn list(
    sim: &Sim,
    r: &'static Resource,
    ns: &str,
    query: &Query,
    as_table: bool,
) -> Response<Body> {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(s) => return status_response(s),
    };
    let (items, rv) = sim.store.list(r.plural, (!ns.is_empty()).then_some(ns));
    let items: Vec<Value> = items
        .into_iter()
        .filter(|o| labels.matches(&o["metadata"]["labels"]) && fields.matches(o))
        .collect();
    if as_table {
        return json_response(200, &table::table(r, &items, rv));
    }
    json_response(
        200,
        &json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    )
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// `?watch=true`: the changes after `resourceVersion` (none or "0": the current objects as
/// ADDED first), one JSON event per line, until `timeoutSeconds` or the client goes.
fn watch(sim: Arc<Sim>, r: &'static Resource, ns: &str, query: &Query) -> Response<Body> {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(s) => return status_response(s),
    };
    let ns_filter = (!ns.is_empty()).then(|| ns.to_string());
    let requested = query.get("resourceVersion").unwrap_or("");
    let send_initial = query.flag("sendInitialEvents");
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let mut pending: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
    let rv_rx = sim.store.subscribe();
    let last = if requested.is_empty() || requested == "0" || send_initial {
        let (items, rv) = sim.store.list(r.plural, ns_filter.as_deref());
        for o in items
            .iter()
            .filter(|o| labels.matches(&o["metadata"]["labels"]) && fields.matches(o))
        {
            pending.push_back(watch_line("ADDED", o));
        }
        if send_initial && bookmarks {
            pending.push_back(watch_line(
                "BOOKMARK",
                &json!({"kind": r.kind, "apiVersion": r.api_version(),
                        "metadata": {"resourceVersion": rv.to_string(),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}}),
            ));
        }
        rv
    } else {
        match requested.parse::<u64>() {
            Ok(rv) => rv,
            Err(_) => {
                return status_response(bad_request(&format!(
                    "invalid resourceVersion {requested:?}"
                )))
            }
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    struct State {
        sim: Arc<Sim>,
        pending: std::collections::VecDeque<Bytes>,
        last: u64,
        done: bool,
        rv_rx: tokio::sync::watch::Receiver<u64>,
        labels: Arc<LabelSelector>,
        fields: Arc<FieldSelector>,
        ns_filter: Option<String>,
    }
    let state = State {
        sim,
        pending,
        last,
        done: false,
        rv_rx,
        labels: Arc::new(labels),
        fields: Arc::new(fields),
        ns_filter,
    };
    let stream = futures_util::stream::unfold(state, move |mut st| {
        async move {
            loop {
                if let Some(line) = st.pending.pop_front() {
                    return Some((Ok::<_, std::io::Error>(Frame::data(line)), st));
                }
                if st.done {
                    return None;
                }
                // Mark the current version seen before reading, so no change is missed.
                st.rv_rx.borrow_and_update();
                match st
                    .sim
                    .store
                    .events_since(r.plural, st.ns_filter.as_deref(), st.last)
                {
                    Err(_) => {
                        let status = util::status(
                            410,
                            "Expired",
                            &format!("too old resource version: {}", st.last),
                            Value::Null,
                        );
                        st.pending.push_back(watch_line("ERROR", &status));
                        st.done = true;
                        continue;
                    }
                    Ok((events, now)) => {
                        st.last = now;
                        for e in events.iter().filter(|e| {
                            st.labels.matches(&e.object["metadata"]["labels"])
                                && st.fields.matches(&e.object)
                        }) {
                            st.pending.push_back(watch_line(e.kind.as_str(), &e.object));
                        }
                        if !st.pending.is_empty() {
                            continue;
                        }
                    }
                }
                tokio::select! {
                    changed = st.rv_rx.changed() => if changed.is_err() { return None },
                    _ = tokio::time::sleep_until(deadline) => return None,
                }
            }
        }
    });
    let body: Body = StreamBody::new(Box::pin(stream)).boxed_unsync();
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// `pods/NAME/log`: the container's output so far (`tailLines`), and with `follow=true`
/// what it writes later, until it exits.
async fn log(sim: Arc<Sim>, ns: &str, pod: &str, query: &Query) -> Response<Body> {
    let container = query.get("container").unwrap_or("");
    if sim.store.get("pods", ns, pod).is_none() {
        return status_response(util::not_found("pods", "pods", "", pod));
    }
    let (path, _) = match sim.kubelet.log_file(&sim, ns, pod, container) {
        Ok(x) => x,
        Err(s) => return status_response(s),
    };
    let follow = query.flag("follow");
    let tail = query.get("tailLines").and_then(|t| t.parse::<usize>().ok());
    let text = std::fs::read(&path).unwrap_or_default();
    let start = match tail {
        Some(n) => {
            // Offset of the n-th line from the end.
            let mut count = 0;
            let mut offset = 0;
            let body = text.strip_suffix(b"\n").unwrap_or(&text);
            for (i, b) in body.iter().enumerate().rev() {
                if *b == b'\n' {
                    count += 1;
                    if count == n {
                        offset = i + 1;
                        break;
                    }
                }
            }
            if n == 0 {
                text.len()
            } else {
                offset
            }
        }
        None => 0,
    };
    let mut resp = if !follow {
        Response::new(full(text[start..].to_vec()))
    } else {
        struct Follow {
            sim: Arc<Sim>,
            ns: String,
            pod: String,
            path: std::path::PathBuf,
            offset: u64,
            finished: bool,
        }
        let st = Follow {
            sim,
            ns: ns.to_string(),
            pod: pod.to_string(),
            path,
            offset: start as u64,
            finished: false,
        };
        let stream = futures_util::stream::unfold(st, |mut st| async move {
            loop {
                let chunk = read_from(&st.path, st.offset);
                if !chunk.is_empty() {
                    st.offset += chunk.len() as u64;
                    return Some((Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk))), st));
                }
                if st.finished {
                    return None;
                }
                // One more read after the container is seen finished catches its last words.
                st.finished = st.sim.kubelet.container_finished(&st.ns, &st.pod, &st.path);
                if !st.finished {
                    tokio::time::sleep(LOG_POLL).await;
                }
            }
        });
        Response::new(StreamBody::new(Box::pin(stream)).boxed_unsync())
    };
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Up to 64 KiB of `path` from `offset`.
fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut buf);
    buf
}

fn invalid(r: &Resource, name: &str, causes: &[(&str, &str)]) -> Value {
    let detail: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
    util::status(
        422,
        "Invalid",
        &format!(
            "{}.{} \"{name}\" is invalid: {}",
            r.kind,
            if r.group.is_empty() { "" } else { r.group },
            detail.join(", ")
        )
        .replace(". \"", " \""),
        json!({
            "name": name, "group": r.group, "kind": r.kind,
            "causes": causes.iter().map(|(f, m)| json!({"reason": "FieldValueRequired", "message": m, "field": f})).collect::<Vec<_>>(),
        }),
    )
}

/// Checks `object` decodes as the typed Kubernetes object of `r` (rollouts: any object).
fn decode_check(r: &Resource, object: &Value) -> Result<(), String> {
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
    fn check<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
        serde_json::from_value::<T>(v.clone())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    match r.plural {
        "namespaces" => check::<core::Namespace>(object),
        "pods" => check::<core::Pod>(object),
        "services" => check::<core::Service>(object),
        "deployments" => check::<apps::Deployment>(object),
        "statefulsets" => check::<apps::StatefulSet>(object),
        "replicasets" => check::<apps::ReplicaSet>(object),
        "jobs" => check::<batch::Job>(object),
        "cronjobs" => check::<batch::CronJob>(object),
        _ => Ok(()),
    }
}

/// Creates an object as `POST` does: validation, name generation, the Job controller and
/// the kubelet for Jobs and pods. The error is the `Status` to answer with.
pub(crate) async fn create_object(
    sim: &Arc<Sim>,
    r: &'static Resource,
    ns: &str,
    mut object: Value,
) -> Result<Value, Value> {
    if !object.is_object() {
        return Err(bad_request("the request body must be a JSON object"));
    }
    for (field, want) in [
        ("kind", r.kind.to_string()),
        ("apiVersion", r.api_version()),
    ] {
        match object[field].as_str() {
            Some(have) if have != want => {
                return Err(bad_request(&format!(
                    "the API version in the data ({}) does not match the expected API version \
                     ({}) or kind {have:?} is not {want:?}",
                    object["apiVersion"], want
                )))
            }
            _ => object[field] = json!(want),
        }
    }
    if let Err(e) = decode_check(r, &object) {
        return Err(bad_request(&format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            r.kind, r.version, r.kind
        )));
    }
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    if r.namespaced {
        match object["metadata"]["namespace"].as_str() {
            Some(have) if have != ns => {
                return Err(bad_request(
                    "the namespace of the provided object does not match the namespace sent on \
                     the request",
                ))
            }
            _ => object["metadata"]["namespace"] = json!(ns),
        }
        if sim.store.get("namespaces", "", ns).is_none() {
            return Err(util::not_found("namespaces", "namespaces", "", ns));
        }
    }
    if object["metadata"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        match object["metadata"]["generateName"].as_str() {
            Some(prefix) if !prefix.is_empty() => {
                object["metadata"]["name"] = json!(format!("{prefix}{}", util::random_suffix(5)))
            }
            _ => {
                return Err(invalid(
                    r,
                    "",
                    &[(
                        "metadata.name",
                        "Required value: name or generateName is required",
                    )],
                ))
            }
        }
    }
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for m in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
    ] {
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove(m);
        }
    }
    let pod_spec = match r.plural {
        "pods" => Some(&object["spec"]),
        "jobs" => Some(&object["spec"]["template"]["spec"]),
        _ => None,
    };
    if let Some(spec) = pod_spec {
        let mut causes = Vec::new();
        if spec["containers"].as_array().is_none_or(Vec::is_empty) {
            causes.push(("spec.containers", "Required value"));
        }
        if r.plural == "jobs"
            && !matches!(spec["restartPolicy"].as_str(), Some("Never" | "OnFailure"))
        {
            causes.push((
                "spec.template.spec.restartPolicy",
                "Required value: valid values: \"OnFailure\", \"Never\"",
            ));
        }
        if !causes.is_empty() {
            return Err(invalid(r, &name, &causes));
        }
    }
    let exists = || {
        util::status(
            409,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", r.qualified()),
            json!({"name": name, "group": r.group, "kind": r.plural}),
        )
    };
    let store_ns = if r.namespaced { ns } else { "" };
    match r.plural {
        "jobs" => {
            jobs::prepare(&mut object);
            let job = sim.store.create("jobs", ns, object).ok_or_else(exists)?;
            let pod = jobs::pod_for(&job);
            let pod_name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if sim.store.create("pods", ns, pod).is_some() {
                spawn_pod(sim, ns, &pod_name);
            }
            jobs::sync_status(sim, ns, &name);
            Ok(sim.store.get("jobs", ns, &name).unwrap_or(job))
        }
        "pods" => {
            if object["spec"]["nodeName"].is_null() {
                object["spec"]["nodeName"] = json!(kubelet::NODE_NAME);
            }
            object["status"] = json!({"phase": "Pending"});
            let pod = sim.store.create("pods", ns, object).ok_or_else(exists)?;
            spawn_pod(sim, ns, &name);
            Ok(pod)
        }
        "services" => {
            if object["spec"]["clusterIP"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                let ip = sim.net.alloc_cluster_ip().to_string();
                object["spec"]["clusterIP"] = json!(ip);
                object["spec"]["clusterIPs"] = json!([ip]);
            }
            if object["spec"]["type"].is_null() {
                object["spec"]["type"] = json!("ClusterIP");
            }
            let svc = sim
                .store
                .create("services", ns, object)
                .ok_or_else(exists)?;
            services::sync_dns(sim);
            services::back_with_pod(sim, ns, &name).await;
            Ok(svc)
        }
        "namespaces" => {
            object["status"] = json!({"phase": "Active"});
            object["spec"] = json!({"finalizers": ["kubernetes"]});
            sim.store
                .create("namespaces", "", object)
                .ok_or_else(exists)
        }
        plural => sim
            .store
            .create(resources::by_plural(plural).plural, store_ns, object)
            .ok_or_else(exists),
    }
}

fn spawn_pod(sim: &Arc<Sim>, ns: &str, name: &str) {
    let (sim, ns, name) = (sim.clone(), ns.to_string(), name.to_string());
    sim.handle().clone().spawn(async move {
        if let Err(e) = kubelet::start_pod(&sim, &ns, &name).await {
            tracing::warn!("starting pod {ns}/{name}: {e:#}");
        }
    });
}

/// Deletes an object as `DELETE` does (`cascade`: the Job's pods too).
pub(crate) async fn delete_object(
    sim: &Arc<Sim>,
    r: &'static Resource,
    ns: &str,
    name: &str,
    cascade: bool,
) -> Result<Value, Value> {
    let not_found = || util::not_found(&r.qualified(), r.plural, r.group, name);
    match r.plural {
        "pods" => kubelet::delete_pod(sim, ns, name)
            .await
            .ok_or_else(not_found),
        "jobs" => jobs::delete(sim, ns, name, cascade)
            .await
            .ok_or_else(not_found),
        "namespaces" => {
            if sim.store.get("namespaces", "", name).is_none() {
                return Err(not_found());
            }
            for pod in sim.store.list("pods", Some(name)).0 {
                if let Some(p) = pod["metadata"]["name"].as_str() {
                    kubelet::delete_pod(sim, name, p).await;
                }
            }
            for res in resources::RESOURCES.iter().filter(|r| r.namespaced) {
                for obj in sim.store.list(res.plural, Some(name)).0 {
                    if let Some(n) = obj["metadata"]["name"].as_str() {
                        sim.store.delete(res.plural, name, n);
                    }
                }
            }
            sim.store
                .delete("namespaces", "", name)
                .ok_or_else(not_found)
        }
        plural => {
            let deleted = sim
                .store
                .delete(
                    resources::by_plural(plural).plural,
                    if r.namespaced { ns } else { "" },
                    name,
                )
                .ok_or_else(not_found);
            if plural == "services" {
                services::sync_dns(sim);
            }
            deleted
        }
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in p {
                if v.is_null() {
                    if let Some(t) = target.as_object_mut() {
                        t.remove(k);
                    }
                } else {
                    merge_patch(&mut target[k.as_str()], v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn conflict(r: &Resource, name: &str) -> Value {
    util::status(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            r.qualified()
        ),
        json!({"name": name, "group": r.group, "kind": r.plural}),
    )
}

/// `PUT` (replace) or `PATCH` (JSON merge patch; strategic merge patches are applied as
/// merge patches) of an object or its status.
#[allow(clippy::too_many_arguments)]
fn update(
    sim: &Arc<Sim>,
    r: &'static Resource,
    ns: &str,
    name: &str,
    status_only: bool,
    method: &Method,
    content_type: &str,
    body: Value,
) -> Result<Value, Value> {
    let store_ns = if r.namespaced { ns } else { "" };
    let current = sim
        .store
        .get(r.plural, store_ns, name)
        .ok_or_else(|| util::not_found(&r.qualified(), r.plural, r.group, name))?;
    let mut next = current.clone();
    if method == Method::PUT {
        if let Some(rv) = body["metadata"]["resourceVersion"].as_str() {
            if current["metadata"]["resourceVersion"].as_str() != Some(rv) {
                return Err(conflict(r, name));
            }
        }
        next = body;
    } else if content_type.starts_with("application/merge-patch+json")
        || content_type.starts_with("application/strategic-merge-patch+json")
    {
        merge_patch(&mut next, &body);
    } else {
        return Err(util::status(
            415,
            "UnsupportedMediaType",
            &format!("the body of the request was in an unknown format: {content_type}"),
            Value::Null,
        ));
    }
    // What the client may not change.
    for field in ["uid", "name", "namespace", "creationTimestamp"] {
        next["metadata"][field] = current["metadata"][field].clone();
    }
    if !status_only {
        next["status"] = current["status"].clone();
    } else {
        let status = next["status"].clone();
        next = current.clone();
        next["status"] = status;
    }
    next["kind"] = json!(r.kind);
    next["apiVersion"] = json!(r.api_version());
    if let Err(e) = decode_check(r, &next) {
        return Err(invalid(r, name, &[("body", e.as_str())]));
    }
    sim.store
        .update(r.plural, store_ns, name, |o| *o = next)
        .ok_or_else(|| util::not_found(&r.qualified(), r.plural, r.group, name))
}

/// `pods/NAME/ephemeralcontainers`: PUT with the whole pod, or PATCH (merge, strategic
/// merge, or JSON patch `add` operations on `/spec/ephemeralContainers`). New containers start
/// in the pod's network namespace; existing ones may not be removed or changed.
fn ephemeral(
    sim: &Arc<Sim>,
    ns: &str,
    name: &str,
    method: &Method,
    content_type: &str,
    body: Value,
) -> Result<Value, Value> {
    let r = resources::by_plural("pods");
    let pod = sim
        .store
        .get("pods", ns, name)
        .ok_or_else(|| util::not_found("pods", "pods", "", name))?;
    let existing: Vec<Value> = pod["spec"]["ephemeralContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let requested: Vec<Value> = if method == Method::PUT {
        if let Some(rv) = body["metadata"]["resourceVersion"].as_str() {
            if pod["metadata"]["resourceVersion"].as_str() != Some(rv) {
                return Err(conflict(r, name));
            }
        }
        body["spec"]["ephemeralContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    } else if content_type.starts_with("application/json-patch+json") {
        let mut list = existing.clone();
        for op in body.as_array().into_iter().flatten() {
            let path = op["path"].as_str().unwrap_or("");
            match (op["op"].as_str(), path) {
                (Some("add"), "/spec/ephemeralContainers") => {
                    list = op["value"].as_array().cloned().unwrap_or_default()
                }
                (Some("add"), p) if p.starts_with("/spec/ephemeralContainers/") => {
                    list.push(op["value"].clone())
                }
                (Some("test"), _) => {}
                _ => {
                    return Err(invalid(
                        r,
                        name,
                        &[(
                            "spec.ephemeralContainers",
                            "Forbidden: only add is supported",
                        )],
                    ))
                }
            }
        }
        list
    } else {
        // Merge and strategic merge (by name) both end up with the existing containers plus
        // the ones named in the patch.
        let mut list = existing.clone();
        for c in body["spec"]["ephemeralContainers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if !list.iter().any(|e| e["name"] == c["name"]) {
                list.push(c.clone());
            }
        }
        list
    };
    for e in &existing {
        if !requested.iter().any(|c| c["name"] == e["name"]) {
            return Err(invalid(
                r,
                name,
                &[(
                    "spec.ephemeralContainers",
                    "Forbidden: existing ephemeral containers may not be removed",
                )],
            ));
        }
    }
    let regular: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let mut added = Vec::new();
    for c in &requested {
        let cname = c["name"].as_str().unwrap_or("");
        if existing.iter().any(|e| e["name"] == c["name"]) {
            continue;
        }
        if cname.is_empty() || c["image"].as_str().is_none_or(str::is_empty) {
            return Err(invalid(
                r,
                name,
                &[("spec.ephemeralContainers", "Required value: name and image")],
            ));
        }
        if regular.contains(&cname) || added.iter().any(|a: &Value| a["name"] == c["name"]) {
            return Err(invalid(
                r,
                name,
                &[("spec.ephemeralContainers[].name", "Duplicate value")],
            ));
        }
        if let Err(e) =
            serde_json::from_value::<k8s_openapi::api::core::v1::EphemeralContainer>(c.clone())
        {
            return Err(invalid(
                r,
                name,
                &[("spec.ephemeralContainers", e.to_string().as_str())],
            ));
        }
        added.push(c.clone());
    }
    if !added.is_empty() && sim.kubelet.netns(ns, name).is_none() {
        return Err(bad_request(&format!(
            "pod {name} is not running: ephemeral containers need a running pod"
        )));
    }
    let mut list = existing;
    list.extend(added.iter().cloned());
    sim.store
        .update("pods", ns, name, |p| {
            p["spec"]["ephemeralContainers"] = json!(list)
        })
        .ok_or_else(|| util::not_found("pods", "pods", "", name))?;
    for c in &added {
        kubelet::start_ephemeral(sim, ns, name, c);
    }
    sim.store
        .get("pods", ns, name)
        .ok_or_else(|| util::not_found("pods", "pods", "", name))
}
