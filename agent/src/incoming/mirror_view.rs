//! The traffic view of a mirrored copy that the agent delivers to the program itself (see
//! `deliver`): the HTTP/1 requests in the copy and the program's answers, paired in order, as
//! `HttpRequest` events. (A copy that goes through the session is read there instead.)
//!
//! Only heads are read; bodies are counted past without being kept. A connection that is not
//! HTTP/1, or breaks its framing, is simply not shown any more: the copy itself goes on.

use super::http1_steal::{parse_request, parse_response, BodyLeft, Framing, MAX_HEAD};
use bytes::{Buf, BytesMut};
use mirrord_protocol::agent::{AgentEvent, AgentMessage, TrafficMode};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Requests of one connection the program has not answered yet, at most: a program that
/// leaves more unanswered stops the view of that connection.
const MAX_WAITING: usize = 1024;

/// A request of the copy, waiting for its answer.
struct Asked {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    since: Instant,
}

/// Requests asked, shared by the two directions. `None` once the view gave up.
type Waiting = Arc<Mutex<Option<VecDeque<Asked>>>>;

fn lock(w: &Waiting) -> std::sync::MutexGuard<'_, Option<VecDeque<Asked>>> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// One direction of a connection: where its messages' heads and bodies are.
#[derive(Default)]
struct Scan {
    /// The head being read (bodies are never kept).
    head: BytesMut,
    body: Option<BodyLeft>,
}

impl Scan {
    /// Feeds `input`; `parse` reads a head (its length and body framing) from the front of the
    /// buffer. False when the stream broke its framing.
    fn feed<H>(
        &mut self,
        mut input: &[u8],
        mut parse: impl FnMut(&[u8]) -> anyhow::Result<Option<(usize, Framing, H)>>,
        mut on_head: impl FnMut(H),
    ) -> bool {
        loop {
            if let Some(body) = &mut self.body {
                // Body bytes that came after a head in the same piece (the input was added to
                // the head buffer then), else the input itself.
                let from_head = !self.head.is_empty();
                let source: &[u8] = if from_head { &self.head } else { input };
                let Ok(n) = body.take(source) else {
                    return false;
                };
                if from_head {
                    self.head.advance(n);
                } else {
                    input = &input[n..];
                }
                if !body.done() {
                    // It took all it was given.
                    return true;
                }
                self.body = None;
                continue;
            }
            if !input.is_empty() {
                self.head.extend_from_slice(input);
                input = &[];
            }
            if self.head.is_empty() {
                return true;
            }
            match parse(&self.head) {
                Ok(Some((len, framing, head))) => {
                    self.head.advance(len);
                    on_head(head);
                    let body = BodyLeft::new(framing);
                    if !body.done() {
                        self.body = Some(body);
                    }
                }
                Ok(None) => return self.head.len() <= MAX_HEAD,
                Err(_) => return false,
            }
        }
    }
}

/// The request side of a copy's view (fed what the copy sends the program).
pub(super) struct Requests {
    scan: Scan,
    waiting: Waiting,
}

/// The answer side (fed what the program answers); sends the events.
pub(super) struct Answers {
    scan: Scan,
    waiting: Waiting,
    port: u16,
    /// copy's drain task --HttpRequest events--> control channel writer (batched)
    traffic_tx: crate::traffic::TrafficTx,
}

/// A view for one copy delivered to the program for the pod's `port`.
pub(super) fn view(port: u16, traffic_tx: crate::traffic::TrafficTx) -> (Requests, Answers) {
    let waiting: Waiting = Arc::new(Mutex::new(Some(VecDeque::new())));
    (
        Requests {
            scan: Scan::default(),
            waiting: waiting.clone(),
        },
        Answers {
            scan: Scan::default(),
            waiting,
            port,
            traffic_tx,
        },
    )
}

impl Requests {
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        if lock(&self.waiting).is_none() {
            return;
        }
        let waiting = &self.waiting;
        let ok = self.scan.feed(
            bytes,
            |buf| Ok(parse_request(buf)?.map(|r| (r.len, r.body, r))),
            |r| {
                let mut w = lock(waiting);
                if let Some(q) = w.as_mut() {
                    q.push_back(Asked {
                        method: r.method,
                        path: r.path,
                        headers: r.headers,
                        since: Instant::now(),
                    });
                    if q.len() > MAX_WAITING {
                        *w = None;
                    }
                }
            },
        );
        if !ok {
            *lock(&self.waiting) = None;
        }
    }
}

impl Answers {
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        let waiting = &self.waiting;
        if lock(waiting).is_none() {
            return;
        }
        let (port, traffic_tx) = (self.port, &self.traffic_tx);
        let ok = self.scan.feed(
            bytes,
            |buf| {
                // The method decides whether the answer has a body (HEAD).
                let method = lock(waiting)
                    .as_ref()
                    .and_then(|q| q.front().map(|a| a.method.clone()))
                    .unwrap_or_default();
                Ok(parse_response(buf, &method)?.map(|r| (r.len, r.body, r.status)))
            },
            |status| {
                if (100..200).contains(&status) && status != 101 {
                    return;
                }
                let Some(asked) = lock(waiting).as_mut().and_then(|q| q.pop_front()) else {
                    return;
                };
                // try_send: the traffic view must never hold up the copy.
                traffic_tx.send(AgentMessage::Event(AgentEvent::HttpRequest {
                    port,
                    mode: TrafficMode::Mirror,
                    method: asked.method,
                    path: asked.path,
                    headers: asked.headers,
                    status,
                    duration_ms: asked.since.elapsed().as_millis() as u64,
                    filter: None,
                }));
            },
        );
        if !ok {
            *lock(waiting) = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(rx: &mut crate::traffic::TrafficRx) -> Vec<(String, String, u16)> {
        let mut out = Vec::new();
        while let Ok(AgentMessage::Event(AgentEvent::HttpRequest {
            method,
            path,
            status,
            ..
        })) = rx.rx.try_recv()
        {
            out.push((method, path, status));
        }
        out
    }

    /// Requests and answers cut anywhere, bodies of every framing, a HEAD answer with a
    /// length but no body, an interim 100: every exchange is shown once, in order.
    #[test]
    fn every_exchange_is_shown_once_wherever_the_bytes_are_cut() {
        let requests = concat!(
            "POST /a HTTP/1.1\r\ncontent-length: 4\r\n\r\nbody",
            "HEAD /b HTTP/1.1\r\n\r\n",
            "POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "GET /d HTTP/1.1\r\n\r\n",
        )
        .as_bytes();
        let answers = concat!(
            "HTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        )
        .as_bytes();
        for cut in [1, 2, 3, 7, 19, 64, 4096] {
            let (tx, mut rx) = crate::traffic::channel();
            let (mut req, mut ans) = view(80, tx);
            for piece in requests.chunks(cut) {
                req.feed(piece);
            }
            for piece in answers.chunks(cut) {
                ans.feed(piece);
            }
            let got = events(&mut rx);
            let want: Vec<(String, String, u16)> = [
                ("POST", "/a", 201),
                ("HEAD", "/b", 200),
                ("POST", "/c", 200),
                ("GET", "/d", 404),
            ]
            .iter()
            .map(|(m, p, s)| (m.to_string(), p.to_string(), *s))
            .collect();
            assert_eq!(got, want, "cut every {cut} bytes");
        }
    }

    #[test]
    fn a_copy_that_is_not_http_is_not_shown() {
        let (tx, mut rx) = crate::traffic::channel();
        let (mut req, mut ans) = view(80, tx);
        req.feed(b"\x16\x03\x01 not http\r\n\r\n");
        ans.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(events(&mut rx).is_empty());
    }
}
