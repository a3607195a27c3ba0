//! Telling HTTP from other protocols by a connection's first bytes, without losing them.

use super::BoxIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// How long to wait for a connection's first bytes to tell HTTP from other protocols.
pub(super) const SNIFF_TIMEOUT: Duration = Duration::from_millis(1500);

pub(super) enum Protocol {
    Http,
    Other,
}

const HTTP_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Tells HTTP from other protocols by the first bytes; returns them with the stream (as a
/// stream that yields them again first).
pub(super) async fn sniff(mut stream: BoxIo) -> (Protocol, Prefixed<BoxIo>) {
    let mut buf = [0u8; 16];
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let protocol = loop {
        let got = match tokio::time::timeout_at(deadline, stream.read(&mut buf[n..])).await {
            Ok(Ok(got)) => got,
            _ => break Protocol::Other,
        };
        if got == 0 {
            break Protocol::Other;
        }
        n += got;
        match classify(&buf[..n]) {
            Some(p) => break p,
            // A prefix of a method: wait for more bytes.
            None => continue,
        }
    };
    (protocol, Prefixed::new(buf[..n].to_vec(), stream))
}

/// HTTP, not HTTP, or `None` while `seen` may still become a request line or the h2 preface.
fn classify(seen: &[u8]) -> Option<Protocol> {
    let could_be = |p: &[u8]| {
        let k = p.len().min(seen.len());
        p[..k] == seen[..k]
    };
    if HTTP_METHODS.iter().any(|m| seen.starts_with(m)) || seen.starts_with(H2_PREFACE) {
        return Some(Protocol::Http);
    }
    if !(HTTP_METHODS.iter().any(|m| could_be(m)) || could_be(H2_PREFACE)) || seen.len() >= 16 {
        return Some(Protocol::Other);
    }
    None
}

/// A stream whose first bytes were already read: they are read again before the rest.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Whether the bytes read while sniffing start with `p`.
    pub(super) fn sniffed(&self, p: &[u8]) -> bool {
        self.prefix.starts_with(p)
    }

    pub(super) fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = &mut *self;
        if me.pos < me.prefix.len() {
            let n = (me.prefix.len() - me.pos).min(buf.remaining());
            buf.put_slice(&me.prefix[me.pos..me.pos + n]);
            me.pos += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Cases per property: `MIRRORD_FUZZ_CASES` (`scripts/fuzz`), else what CI can afford.
    fn cases() -> u32 {
        std::env::var("MIRRORD_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500)
    }

    /// What the sniffer must decide for a connection whose bytes are all of `input`.
    fn expected_http(input: &[u8]) -> bool {
        HTTP_METHODS.iter().any(|m| input.starts_with(m)) || input.starts_with(H2_PREFACE)
    }

    /// Sends `input` in pieces cut at `cuts`, then closes; returns the decision and every byte
    /// the sniffed stream yields afterwards.
    fn sniff_all(input: &[u8], cuts: &[usize]) -> (bool, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        rt.block_on(async {
            let (mut peer, ours) = tokio::io::duplex(64);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            points.sort_unstable();
            let input_owned = input.to_vec();
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut from = 0;
                for p in points.into_iter().chain([input_owned.len()]) {
                    if peer.write_all(&input_owned[from..p]).await.is_err() {
                        return;
                    }
                    from = p;
                    tokio::task::yield_now().await;
                }
            });
            let (protocol, mut stream) = sniff(Box::new(ours)).await;
            let mut all = Vec::new();
            stream
                .read_to_end(&mut all)
                .await
                .expect("reading the sniffed stream");
            writer.await.expect("the writer task");
            (matches!(protocol, Protocol::Http), all)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever arrives, in whatever pieces: the decision follows the first bytes, and
        /// not one byte is lost or repeated for whoever reads the connection next.
        #[test]
        fn sniffing_loses_no_byte_and_decides_by_the_first_bytes(
            method in prop::sample::select(vec![&b""[..], b"GET ", b"POST ", b"PRI * HTTP/2.0\r\n", b"GE", b"PRI * HTTP/2"]),
            tail in prop::collection::vec(any::<u8>(), 0..200),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut input = method.to_vec();
            input.extend_from_slice(&tail);
            let (http, bytes) = sniff_all(&input, &cuts);
            prop_assert_eq!(http, expected_http(&input));
            prop_assert_eq!(bytes, input);
        }
    }
}
