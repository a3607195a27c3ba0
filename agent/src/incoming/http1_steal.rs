//! Unfiltered steal of an HTTP/1 connection: the bytes are relayed as they are, and only each
//! message's head is read, to send kubelet probes to the target (as `filter::matches` does for
//! routed requests) and to know where each response ends.
//!
//! Why not hyper, as `http_route` does for filtered steals: hyper takes every request apart and
//! writes it again, with a server task and a client task that wake each other for each request;
//! an unfiltered steal needs none of that. Here one task reads a request head, passes the head
//! and its body on, then passes the response back, and reads the next head. Pipelined requests
//! wait in the buffer for their turn (their answers keep their order either way); a request's
//! body and its response move at the same time (`Expect: 100-continue`, early answers).
//! An upgrade (`101`) or a `CONNECT` tunnel ends the scanning: both ways are copied as they are.

use super::sniff::Prefixed;
use super::{BoxIo, Hop, IncomingState, Subscriber};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Buf;
use mirrord_protocol::agent::{AgentEvent, AgentMessage};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest message head accepted; longer ones end the connection (hyper's own limit is of this
/// order).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in one head.
const MAX_HEADERS: usize = 128;
/// Read size.
const CHUNK: usize = 16 * 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// What a request head says.
#[derive(Debug)]
pub(super) struct RequestHead {
    pub(super) len: usize,
    pub(super) method: String,
    pub(super) path: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Framing,
    pub(super) probe: bool,
    /// The connection ends after this exchange (`Connection: close`, or HTTP/1.0 without
    /// keep-alive).
    pub(super) close: bool,
}

/// What a response head says.
#[derive(Debug)]
pub(super) struct ResponseHead {
    pub(super) len: usize,
    pub(super) status: u16,
    pub(super) body: Framing,
    /// As for the request.
    pub(super) close: bool,
}

/// Whether a message of HTTP/1.`version` with `headers` ends its connection.
fn closes(version: Option<u8>, headers: &[httparse::Header<'_>]) -> bool {
    let says = |token: &str| {
        headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("connection")
                && h.value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if version == Some(0) {
        !says("keep-alive")
    } else {
        says("close")
    }
}

fn header_framing(headers: &[httparse::Header<'_>]) -> Result<Option<Framing>> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(h.value).context("transfer-encoding")?;
            // Only the last coding decides how the message ends.
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                bail!("a transfer-coding other than chunked last");
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let value: u64 = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .context("a bad content-length")?;
            if length.is_some_and(|l| l != value) {
                bail!("two different content-lengths");
            }
            length = Some(value);
        }
    }
    // Both present: chunked wins, as RFC 9112 says (and the length is not trusted).
    Ok(if chunked {
        Some(Framing::Chunked)
    } else {
        length.map(Framing::Length)
    })
}

/// A request head at the start of `buf`, or `None` while it is incomplete.
pub(super) fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req
        .parse(buf)
        .map_err(|e| anyhow!("a bad request head: {e}"))?
    {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let body = header_framing(req.headers)?.unwrap_or(Framing::Length(0));
    let probe = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("user-agent") && h.value.starts_with(b"kube-probe/"));
    let close = closes(req.version, req.headers);
    Ok(Some(RequestHead {
        close,
        len,
        method: req.method.unwrap_or_default().to_owned(),
        path: req.path.unwrap_or_default().to_owned(),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body,
        probe,
    }))
}

/// A response head at the start of `buf` (to a request with `method`), or `None` while it is
/// incomplete.
pub(super) fn parse_response(buf: &[u8], method: &str) -> Result<Option<ResponseHead>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res
        .parse(buf)
        .map_err(|e| anyhow!("a bad response head: {e}"))?
    {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = res.code.unwrap_or(0);
    let body = if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        Framing::Length(0)
    } else {
        header_framing(res.headers)?.unwrap_or(Framing::Close)
    };
    Ok(Some(ResponseHead {
        len,
        status,
        body,
        close: closes(res.version, res.headers),
    }))
}

/// Finds where a chunked body ends, fed its bytes as they come.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    state: ChunkState,
    /// Digits and extension of the size line being read.
    line: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Data bytes left in the chunk.
    Data(u64),
    /// The CRLF after a chunk's data; the count says how many of its two bytes were seen.
    DataEnd(u8),
    /// Trailer lines after the last chunk; the count is the bytes of the current line.
    Trailer(usize),
    Done,
}

impl Chunked {
    /// How many bytes of `input` belong to the body; the body ended when [`Chunked::done`].
    fn feed(&mut self, input: &[u8]) -> Result<usize> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Size => {
                    let b = input[i];
                    i += 1;
                    if b == b'\n' {
                        let line = std::mem::take(&mut self.line);
                        let line = line.strip_suffix(b"\r").unwrap_or(&line);
                        let digits = line.split(|c| *c == b';').next().unwrap_or_default();
                        let text = std::str::from_utf8(digits).context("a chunk size")?;
                        let size =
                            u64::from_str_radix(text.trim(), 16).context("a bad chunk size")?;
                        self.state = if size == 0 {
                            ChunkState::Trailer(0)
                        } else {
                            ChunkState::Data(size)
                        };
                    } else {
                        if self.line.len() >= 1024 {
                            bail!("a chunk size line too long");
                        }
                        self.line.push(b);
                    }
                }
                ChunkState::Data(left) => {
                    let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd(0)
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd(seen) => {
                    let expected = if seen == 0 { b'\r' } else { b'\n' };
                    if input[i] != expected {
                        bail!("no CRLF after a chunk");
                    }
                    i += 1;
                    self.state = if seen == 0 {
                        ChunkState::DataEnd(1)
                    } else {
                        ChunkState::Size
                    };
                }
                ChunkState::Trailer(line_len) => {
                    let b = input[i];
                    i += 1;
                    self.state = match b {
                        // An empty line (only its CR before) ends the trailers and the body.
                        b'\n' if line_len <= 1 => ChunkState::Done,
                        b'\n' => ChunkState::Trailer(0),
                        _ if line_len >= MAX_HEAD => bail!("a trailer line too long"),
                        _ => ChunkState::Trailer(line_len + 1),
                    };
                }
            }
        }
        Ok(i)
    }

    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// How much of a body is still to come.
pub(super) enum BodyLeft {
    Length(u64),
    Chunked(Chunked),
    Close,
}

impl BodyLeft {
    pub(super) fn new(framing: Framing) -> BodyLeft {
        match framing {
            Framing::Length(n) => BodyLeft::Length(n),
            Framing::Chunked => BodyLeft::Chunked(Chunked::default()),
            Framing::Close => BodyLeft::Close,
        }
    }

    /// How many bytes of `input` are body; consumes them from the count.
    pub(super) fn take(&mut self, input: &[u8]) -> Result<usize> {
        match self {
            BodyLeft::Length(left) => {
                let n = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                Ok(n)
            }
            BodyLeft::Chunked(c) => c.feed(input),
            BodyLeft::Close => Ok(input.len()),
        }
    }

    pub(super) fn done(&self) -> bool {
        match self {
            BodyLeft::Length(left) => *left == 0,
            BodyLeft::Chunked(c) => c.done(),
            BodyLeft::Close => false,
        }
    }
}

/// A byte source with what was read but not yet used.
struct Buffered<R> {
    inner: R,
    /// Read and not yet passed on (`advance` drops the front without moving the rest).
    buf: bytes::BytesMut,
}

impl<R: AsyncRead + Unpin> Buffered<R> {
    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> Result<bool> {
        self.buf.reserve(CHUNK);
        Ok(self.inner.read_buf(&mut self.buf).await? > 0)
    }

    /// Whether the other side has already closed (without waiting): an end of stream or an
    /// error that is there now. Bytes that are there now are kept.
    async fn closed_now(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        let polled = std::future::poll_fn(|cx| {
            let mut read = tokio::io::ReadBuf::new(&mut chunk);
            std::task::Poll::Ready(
                match std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut read) {
                    std::task::Poll::Ready(Ok(())) => Some(read.filled().len()),
                    std::task::Poll::Ready(Err(_)) => Some(0),
                    std::task::Poll::Pending => None,
                },
            )
        })
        .await;
        match polled {
            Some(0) => true,
            Some(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            None => false,
        }
    }

    /// Reads a head with `parse`; `None` at a clean end of the stream before any byte of it.
    async fn head<T>(&mut self, parse: impl Fn(&[u8]) -> Result<Option<T>>) -> Result<Option<T>> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse(&self.buf)? {
                    return Ok(Some(head));
                }
                if self.buf.len() > MAX_HEAD {
                    bail!("a message head over {MAX_HEAD} bytes");
                }
            }
            if !self.fill().await? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("the stream ended inside a message head");
            }
        }
    }

    /// Passes the first `len` buffered bytes (a head) to `out`.
    async fn pass_head<W: AsyncWrite + Unpin>(&mut self, len: usize, out: &mut W) -> Result<()> {
        out.write_all(&self.buf[..len]).await?;
        self.buf.advance(len);
        Ok(())
    }

    /// Passes a head of `len` bytes and then its body to `out`: the head together with the
    /// part of the body already read, in one write (one segment rather than two when a
    /// message arrived whole), then the rest as it comes.
    async fn pass_message<W: AsyncWrite + Unpin>(
        &mut self,
        len: usize,
        mut left: BodyLeft,
        out: &mut W,
    ) -> Result<()> {
        let n = len + left.take(&self.buf[len..])?;
        out.write_all(&self.buf[..n]).await?;
        self.buf.advance(n);
        self.pass_body(left, out).await
    }

    /// Passes a body to `out`, buffered bytes first, until `left` is done (or, for a body that
    /// ends with the stream, until it does). Bytes after the body stay buffered.
    async fn pass_body<W: AsyncWrite + Unpin>(
        &mut self,
        mut left: BodyLeft,
        out: &mut W,
    ) -> Result<()> {
        loop {
            if !self.buf.is_empty() {
                let n = left.take(&self.buf)?;
                out.write_all(&self.buf[..n]).await?;
                self.buf.advance(n);
            }
            if left.done() {
                return Ok(());
            }
            if !self.fill().await? {
                return match left {
                    BodyLeft::Close => Ok(()),
                    _ => Err(anyhow!("the stream ended inside a body")),
                };
            }
        }
    }
}

/// Where a request goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Stealer,
    Target,
}

/// One upstream connection, split so a request body and its response can move together.
struct Upstream {
    reader: Buffered<tokio::io::ReadHalf<BoxIo>>,
    writer: tokio::io::WriteHalf<BoxIo>,
}

impl Upstream {
    fn new(stream: BoxIo) -> Upstream {
        let (reader, writer) = tokio::io::split(stream);
        Upstream {
            reader: Buffered {
                inner: reader,
                buf: bytes::BytesMut::new(),
            },
            writer,
        }
    }
}

impl IncomingState {
    /// Serves a connection that speaks HTTP/1 for the one unfiltered `stealer` of its port.
    pub(super) async fn steal_http1<S>(
        self: &Arc<Self>,
        stream: Prefixed<S>,
        hop: Hop,
        stealer: Subscriber,
    ) -> Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let open = |side: Side| {
            let (me, hop, client) = (self.clone(), &hop, stealer.client.clone());
            async move {
                match side {
                    Side::Stealer => me
                        .stolen_channel(&client, hop.port, hop.peer, hop.original)
                        .await
                        .context("the stealing client did not pick the connection up"),
                    Side::Target => {
                        me.next_hop(hop.port, hop.peer, hop.original, &hop.visited)
                            .await
                    }
                }
            }
        };
        let report = |request: &RequestHead, status: u16, took: std::time::Duration| {
            // try_send: the traffic view must never hold up a request.
            stealer
                .client
                .traffic_tx
                .send(AgentMessage::Event(AgentEvent::HttpRequest {
                    mode: mirrord_protocol::agent::TrafficMode::Steal,
                    port: hop.port,
                    method: request.method.clone(),
                    path: request.path.clone(),
                    headers: request.headers.clone(),
                    status,
                    duration_ms: took.as_millis() as u64,
                    filter: None,
                }));
        };
        relay(stream, open, report).await
    }
}

/// Relays one client connection: each request to the upstream `open` gives for its side (one
/// connection per side, opened on first use), each response back; `report` hears of every
/// exchange with the stealer.
async fn relay<S, O, F, R>(stream: S, mut open: O, mut report: R) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    O: FnMut(Side) -> F,
    F: std::future::Future<Output = Result<BoxIo>>,
    R: FnMut(&RequestHead, u16, std::time::Duration),
{
    let (client_r, mut client_w) = tokio::io::split(stream);
    let mut client = Buffered {
        inner: client_r,
        buf: bytes::BytesMut::new(),
    };
    let mut stealer_up: Option<Upstream> = None;
    let mut target_up: Option<Upstream> = None;
    loop {
        let Some(request) = client.head(parse_request).await? else {
            break;
        };
        let side = if request.probe {
            Side::Target
        } else {
            Side::Stealer
        };
        let slot = match side {
            Side::Stealer => &mut stealer_up,
            Side::Target => &mut target_up,
        };
        // An upstream that closed while idle (a keep-alive timeout) is replaced before a
        // request is written to it, as hyper's client does.
        if let Some(up) = slot.as_mut() {
            if up.reader.closed_now().await {
                *slot = None;
            }
        }
        if slot.is_none() {
            match open(side).await {
                Ok(stream) => *slot = Some(Upstream::new(stream)),
                Err(e) => {
                    tracing::debug!("no upstream for a request: {e:#}");
                    let _ = client_w
                        .write_all(
                            b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return Ok(());
                }
            }
        }
        // Present: filled just above.
        let up = slot.as_mut().expect("upstream present");
        let started = std::time::Instant::now();
        let (up_r, up_w) = (&mut up.reader, &mut up.writer);
        let tunnel = request.method.eq_ignore_ascii_case("CONNECT");
        let body = async {
            client
                .pass_message(request.len, BodyLeft::new(request.body), up_w)
                .await
        };
        let response = pass_response(up_r, &mut client_w, &request.method);
        // A broken request body ends the exchange at once (the upstream would wait for the
        // rest forever); otherwise both run to their end.
        let ((), response) = tokio::try_join!(body, response)?;
        if side == Side::Stealer {
            report(&request, response.status, started.elapsed());
        }
        let switched = response.status == 101 || (tunnel && (200..300).contains(&response.status));
        if switched {
            // Not HTTP any more: what is buffered on either side goes first, then both ways
            // are copied as they come.
            let up = slot.take().expect("upstream present");
            return tunnel_rest(client, client_w, up).await;
        }
        if response.body == Framing::Close || response.close || request.close {
            // The exchange ends the connection (the upstream closes it, or was asked to);
            // the client hears the end as it would from the target.
            break;
        }
    }
    // The client closed, or the last exchange ended the connection: the upstreams hear it
    // too.
    for up in [stealer_up, target_up].into_iter().flatten() {
        let mut w = up.writer;
        let _ = w.shutdown().await;
    }
    let _ = client_w.shutdown().await;
    Ok(())
}

/// Passes a response (after any interim `1xx` ones) from `up` to `client`; returns its head.
async fn pass_response<R, W>(
    up: &mut Buffered<R>,
    client: &mut W,
    method: &str,
) -> Result<ResponseHead>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let head = up
            .head(|b| parse_response(b, method))
            .await?
            .context("the upstream closed without a response")?;
        let interim = (100..200).contains(&head.status) && head.status != 101;
        let switched =
            head.status == 101 || (method.eq_ignore_ascii_case("CONNECT") && head.status < 300);
        if interim || switched {
            // No body: what follows is the next head, or the tunnel's bytes.
            up.pass_head(head.len, client).await?;
            if interim {
                continue;
            }
        } else {
            up.pass_message(head.len, BodyLeft::new(head.body), client)
                .await?;
        }
        return Ok(head);
    }
}

/// Copies both ways as they are, after what each side had buffered.
async fn tunnel_rest<R, W>(client: Buffered<R>, mut client_w: W, up: Upstream) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Upstream {
        reader: up_r,
        writer: mut up_w,
    } = up;
    let Buffered {
        inner: mut client_r,
        buf: client_buf,
    } = client;
    let Buffered {
        inner: mut up_r,
        buf: up_buf,
    } = up_r;
    let to_up = async {
        up_w.write_all(&client_buf).await?;
        tokio::io::copy(&mut client_r, &mut up_w).await?;
        up_w.shutdown().await
    };
    let to_client = async {
        client_w.write_all(&up_buf).await?;
        tokio::io::copy(&mut up_r, &mut client_w).await?;
        client_w.shutdown().await
    };
    let _ = tokio::join!(to_up, to_client);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn body_len(body: &[u8]) -> Result<Option<usize>> {
        let mut c = Chunked::default();
        let n = c.feed(body)?;
        Ok(c.done().then_some(n))
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let body = b"4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\n\r\nGET /next";
        assert_eq!(body_len(body).unwrap(), Some(body.len() - 9));
        let trailers = b"1\r\na\r\n0\r\nx-sum: 1\r\n\r\nrest";
        assert_eq!(body_len(trailers).unwrap(), Some(trailers.len() - 4));
        assert_eq!(body_len(b"4\r\nwik").unwrap(), None);
        assert!(body_len(b"zz\r\n").is_err());
        assert!(body_len(b"1\r\nab\r\n").is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let req = parse_request(b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(req.body, Framing::Length(5));
        let req = parse_request(
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(req.body, Framing::Chunked);
        assert!(parse_request(b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n").is_err());
        assert!(parse_request(
            b"POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"
        )
        .is_err());
        let get = parse_request(b"GET / HTTP/1.1\r\nuser-agent: kube-probe/1.29\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((get.body, get.probe), (Framing::Length(0), true));
        assert!(parse_request(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .unwrap()
            .is_none());
        let res = |raw: &[u8], method| parse_response(raw, method).unwrap().unwrap().body;
        assert_eq!(res(b"HTTP/1.1 200 OK\r\n\r\n", "GET"), Framing::Close);
        assert_eq!(
            res(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", "HEAD"),
            Framing::Length(0)
        );
        assert_eq!(
            res(b"HTTP/1.1 304 Not Modified\r\n\r\n", "GET"),
            Framing::Length(0)
        );
        assert_eq!(
            res(b"HTTP/1.1 100 Continue\r\n\r\n", "POST"),
            Framing::Length(0)
        );
    }

    /// An upstream served by hyper (a real HTTP/1 implementation) over an in-memory pipe. It
    /// answers `<label> <METHOD> <path> <body length>`; `/stream` with a chunked body,
    /// `/upgrade` with 101 and an echo of whatever follows.
    fn upstream(label: &'static str) -> BoxIo {
        use http_body_util::{BodyExt, Full};
        use hyper::{body::Incoming, Request, Response};
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| async move {
            if req.uri().path() == "/upgrade" {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    if let Ok(up) = upgrade.await {
                        let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(up));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
                let mut res = Response::new(Full::new(bytes::Bytes::new()));
                *res.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                res.headers_mut()
                    .insert("connection", "upgrade".parse().expect("a header value"));
                res.headers_mut()
                    .insert("upgrade", "echo".parse().expect("a header value"));
                return Ok::<_, hyper::Error>(res);
            }
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let body = req.into_body().collect().await?.to_bytes();
            let text = format!("{label} {method} {path} {}", body.len());
            let mut res = Response::new(Full::new(bytes::Bytes::from(text)));
            if path == "/stream" {
                res.headers_mut().insert(
                    "transfer-encoding",
                    "chunked".parse().expect("a header value"),
                );
            }
            Ok(res)
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(theirs), service)
                .with_upgrades()
                .await;
        });
        Box::new(ours)
    }

    /// Runs `relay` on one end of a pipe with hyper upstreams; returns the client's end, the
    /// exchanges reported (path, status) and how many upstreams were opened.
    type Reported = Arc<std::sync::Mutex<Vec<(String, u16)>>>;
    fn start_relay() -> (
        tokio::io::DuplexStream,
        Reported,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let (client, ours) = tokio::io::duplex(64 * 1024);
        let reported: Reported = Arc::default();
        let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, o) = (reported.clone(), opened.clone());
        tokio::spawn(async move {
            let open = |side: Side| {
                o.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    Ok(upstream(match side {
                        Side::Stealer => "stealer",
                        Side::Target => "target",
                    }))
                }
            };
            let report = |req: &RequestHead, status: u16, _: std::time::Duration| {
                r.lock()
                    .expect("not poisoned")
                    .push((req.path.clone(), status));
            };
            relay(ours, open, report).await
        });
        (client, reported, opened)
    }

    /// Reads from `s` until `needle` has arrived; returns everything read.
    async fn read_until(s: &mut tokio::io::DuplexStream, needle: &str) -> String {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&all).contains(needle) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("no answer in time")
                .expect("reading");
            assert!(
                n > 0,
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(&all)
            );
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    }

    #[tokio::test]
    async fn pipelined_requests_of_every_framing_keep_their_order_and_probes_go_to_the_target() {
        let (mut client, reported, opened) = start_relay();
        let requests = concat!(
            "GET /a HTTP/1.1\r\nhost: x\r\n\r\n",
            "POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
            "POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            "GET /probe HTTP/1.1\r\nhost: x\r\nuser-agent: kube-probe/1.29\r\n\r\n",
            "HEAD /d HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET /stream HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET /e HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        );
        client
            .write_all(requests.as_bytes())
            .await
            .expect("writing");
        let mut all = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_string(&mut all),
        )
        .await
        .expect("the relay ends the connection after `connection: close`")
        .expect("reading");
        let mut at = 0;
        for answer in [
            "stealer GET /a 0",
            "stealer POST /b 5",
            "stealer POST /c 5",
            "target GET /probe 0",
            "stealer GET /stream 0",
            "stealer GET /e 0",
        ] {
            let found = all[at..].find(answer);
            assert!(found.is_some(), "{answer:?} after byte {at} in {all:?}");
            at += found.unwrap_or(0) + answer.len();
        }
        assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 7, "{all}");
        assert!(
            !all.contains("stealer HEAD"),
            "a HEAD answer has no body: {all}"
        );
        let paths: Vec<String> = reported
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(p, s)| format!("{p} {s}"))
            .collect();
        assert_eq!(
            paths,
            [
                "/a 200",
                "/b 200",
                "/c 200",
                "/d 200",
                "/stream 200",
                "/e 200"
            ]
        );
        assert_eq!(opened.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_body_waits_for_100_continue_and_an_upgrade_becomes_a_tunnel() {
        let (mut client, _, _) = start_relay();
        client
            .write_all(
                b"POST /f HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n",
            )
            .await
            .expect("writing");
        read_until(&mut client, "100 Continue").await;
        client.write_all(b"xyz").await.expect("writing");
        read_until(&mut client, "stealer POST /f 3").await;
        client
            .write_all(
                b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
            )
            .await
            .expect("writing");
        read_until(&mut client, "101 Switching Protocols").await;
        client.write_all(b"not http at all").await.expect("writing");
        read_until(&mut client, "not http at all").await;
    }

    /// Records each write it is given.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn texts(w: &Writes) -> Vec<String> {
        w.0.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// A response read whole goes on in one write (one segment to the client, not a head and
    /// then a body); one whose body comes later goes as it comes; an interim response goes
    /// alone, and the bytes after a response stay for the next one.
    #[tokio::test]
    async fn a_response_read_whole_is_written_once() {
        let whole =
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 204 No Content\r\n\r\n";
        let mut up = Buffered {
            inner: whole.as_bytes(),
            buf: bytes::BytesMut::new(),
        };
        let mut client = Writes::default();
        let head = pass_response(&mut up, &mut client, "GET")
            .await
            .expect("a response");
        assert_eq!(head.status, 200);
        assert_eq!(
            texts(&client),
            ["HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]
        );
        let head = pass_response(&mut up, &mut client, "GET")
            .await
            .expect("a response");
        assert_eq!(head.status, 204);
        assert_eq!(texts(&client)[1], "HTTP/1.1 204 No Content\r\n\r\n");

        let (head_part, body_part) = (
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe"[..],
            &b"llo"[..],
        );
        let mut up = Buffered {
            inner: AsyncReadExt::chain(head_part, body_part),
            buf: bytes::BytesMut::new(),
        };
        let mut client = Writes::default();
        let head = pass_response(&mut up, &mut client, "POST")
            .await
            .expect("a response");
        assert_eq!(head.status, 200);
        assert_eq!(
            texts(&client),
            [
                "HTTP/1.1 100 Continue\r\n\r\n",
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe",
                "llo"
            ]
        );
    }

    #[tokio::test]
    async fn hostile_heads_end_the_connection() {
        for bad in [
            &b"GET / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
            b"\x00\x01garbage\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let (mut client, _, _) = start_relay();
            client.write_all(bad).await.expect("writing");
            let mut rest = Vec::new();
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                client.read_to_end(&mut rest),
            )
            .await
            .expect("the relay ends a hostile connection")
            .expect("reading");
        }
    }

    /// A chunked body written out, with its chunk boundaries at `sizes`.
    fn chunked(data: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = data;
        for s in sizes.iter().map(|s| s % 50 + 1) {
            if rest.is_empty() {
                break;
            }
            let n = s.min(rest.len());
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        if !rest.is_empty() {
            out.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
            out.extend_from_slice(rest);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        /// Fed in any pieces, the scanner finds the body's end exactly, and never claims a byte
        /// after it.
        #[test]
        fn a_chunked_body_ends_exactly_wherever_it_is_cut(
            data in prop::collection::vec(any::<u8>(), 0..300),
            sizes in prop::collection::vec(any::<usize>(), 0..10),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let body = chunked(&data, &sizes);
            let mut input = body.clone();
            input.extend_from_slice(b"GET /after HTTP/1.1\r\n\r\n");
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            points.sort_unstable();
            points.push(input.len());
            let mut c = Chunked::default();
            let mut taken = 0;
            let mut from = 0;
            for p in points {
                if c.done() { break; }
                let n = c.feed(&input[from.max(taken)..p.max(taken)]).unwrap();
                taken += n;
                from = p;
            }
            prop_assert!(c.done());
            prop_assert_eq!(taken, body.len());
        }

        /// Hostile bytes: an error or a count, never a panic or a claim past the input.
        #[test]
        fn hostile_chunked_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut c = Chunked::default();
            if let Ok(n) = c.feed(&input) {
                prop_assert!(n <= input.len());
            }
        }
    }
}
