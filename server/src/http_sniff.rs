//! Reads HTTP/1.x message heads out of a byte stream seen from the side, without taking part in
//! it: `mirrord dump` prints them, and the daemon turns mirrored requests into traffic events.
//! Anything that does not parse as HTTP turns the sniffer off for that stream.

use std::collections::BTreeMap;

/// A message head seen on the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    Request {
        method: String,
        path: String,
        version: String,
        headers: BTreeMap<String, String>,
    },
    Response {
        status: u16,
        reason: String,
        version: String,
        headers: BTreeMap<String, String>,
    },
}

/// What a chunk of stream bytes contained.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Head(Head),
    /// The first bytes of a message body (a preview, at most [`BODY_PREVIEW`] bytes per message).
    Body(Vec<u8>),
}

pub const BODY_PREVIEW: usize = 256;
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Head,
    /// Fixed-length body with this many bytes left.
    Body(usize),
    /// Chunked body: waiting for a chunk-size line.
    ChunkSize,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
    /// Inside a chunk with this many bytes left (plus its CRLF).
    Chunk(usize),
    /// Body runs until the connection closes (responses without a length).
    UntilClose,
    /// Not HTTP (or lost): stop looking.
    Off,
}

pub struct Sniffer {
    requests: bool,
    state: State,
    buf: Vec<u8>,
    previewed: usize,
    /// The request method of each response still to come (HEAD responses have no body).
    pub pending_methods: std::collections::VecDeque<String>,
}

impl Sniffer {
    /// A sniffer for the client→server direction (`requests`) or server→client.
    pub fn new(requests: bool) -> Sniffer {
        Sniffer {
            requests,
            state: State::Head,
            buf: Vec::new(),
            previewed: 0,
            pending_methods: Default::default(),
        }
    }

    pub fn is_http(&self) -> bool {
        self.state != State::Off
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Seen> {
        let mut out = Vec::new();
        if self.state == State::Off {
            return out;
        }
        self.buf.extend_from_slice(data);
        loop {
            match self.state {
                State::Off => {
                    self.buf.clear();
                    break;
                }
                State::Head => match self.parse_head() {
                    Some(Ok((head, used, body))) => {
                        self.buf.drain(..used);
                        self.previewed = 0;
                        self.state = body;
                        out.push(Seen::Head(head));
                    }
                    Some(Err(())) => self.state = State::Off,
                    None => {
                        if self.buf.len() > MAX_HEAD {
                            self.state = State::Off;
                        }
                        break;
                    }
                },
                State::Body(0) => self.state = State::Head,
                State::Body(left) => {
                    if self.buf.is_empty() {
                        break;
                    }
                    let n = left.min(self.buf.len());
                    self.preview(n, &mut out);
                    self.buf.drain(..n);
                    self.state = State::Body(left - n);
                }
                State::UntilClose => {
                    let n = self.buf.len();
                    self.preview(n, &mut out);
                    self.buf.clear();
                    break;
                }
                State::ChunkSize => {
                    let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                        if self.buf.len() > 1024 {
                            self.state = State::Off;
                        }
                        break;
                    };
                    let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end + 2);
                    let size = line.split(';').next().unwrap_or("").trim();
                    match usize::from_str_radix(size, 16) {
                        // The last chunk; trailers (often none) end with an empty line.
                        Ok(0) => self.state = State::Trailers,
                        Ok(n) => self.state = State::Chunk(n + 2),
                        Err(_) => self.state = State::Off,
                    }
                }
                // Waits for the whole trailer section: a stream cut inside it must not be
                // read as the next message's head.
                State::Trailers => {
                    let end = if self.buf.starts_with(b"\r\n") {
                        Some(2)
                    } else {
                        self.buf
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map(|p| p + 4)
                    };
                    match end {
                        Some(n) => {
                            self.buf.drain(..n);
                            self.state = State::Head;
                        }
                        None if self.buf.len() > MAX_HEAD => self.state = State::Off,
                        None => break,
                    }
                }
                State::Chunk(left) => {
                    if self.buf.is_empty() {
                        break;
                    }
                    let n = left.min(self.buf.len());
                    // The trailing CRLF of a chunk is not body.
                    let body = n.min(left.saturating_sub(2));
                    self.preview(body, &mut out);
                    self.buf.drain(..n);
                    self.state = if left == n {
                        State::ChunkSize
                    } else {
                        State::Chunk(left - n)
                    };
                }
            }
        }
        out
    }

    fn preview(&mut self, n: usize, out: &mut Vec<Seen>) {
        let room = BODY_PREVIEW.saturating_sub(self.previewed);
        let take = room.min(n);
        if take > 0 {
            out.push(Seen::Body(self.buf[..take].to_vec()));
            self.previewed += take;
        }
    }

    /// `None`: need more bytes; `Some(Err)`: not HTTP.
    fn parse_head(&mut self) -> Option<Result<(Head, usize, State), ()>> {
        let mut headers = [httparse::EMPTY_HEADER; 96];
        let collect = |hs: &[httparse::Header]| -> BTreeMap<String, String> {
            hs.iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect()
        };
        if self.requests {
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers = collect(req.headers);
                    let method = req.method.unwrap_or("").to_owned();
                    let body = body_state(&headers, false);
                    self.pending_methods.push_back(method.clone());
                    Some(Ok((
                        Head::Request {
                            method,
                            path: req.path.unwrap_or("").to_owned(),
                            version: format!("HTTP/1.{}", req.version.unwrap_or(1)),
                            headers,
                        },
                        n,
                        body,
                    )))
                }
                Ok(httparse::Status::Partial) => None,
                Err(_) => Some(Err(())),
            }
        } else {
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers = collect(resp.headers);
                    let status = resp.code.unwrap_or(0);
                    let head_request = self.pending_methods.front().is_some_and(|m| m == "HEAD");
                    // 1xx are interim: the request still awaits its final response.
                    if status >= 200 {
                        self.pending_methods.pop_front();
                    }
                    let body = if head_request || status < 200 || status == 204 || status == 304 {
                        if status == 101 {
                            State::Off // switched protocols: what follows is not HTTP
                        } else {
                            State::Body(0)
                        }
                    } else {
                        body_state(&headers, true)
                    };
                    Some(Ok((
                        Head::Response {
                            status,
                            reason: resp.reason.unwrap_or("").to_owned(),
                            version: format!("HTTP/1.{}", resp.version.unwrap_or(1)),
                            headers,
                        },
                        n,
                        body,
                    )))
                }
                Ok(httparse::Status::Partial) => None,
                Err(_) => Some(Err(())),
            }
        }
    }
}

fn body_state(headers: &BTreeMap<String, String>, response: bool) -> State {
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        return State::ChunkSize;
    }
    match headers
        .get("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        Some(n) => State::Body(n),
        None if response => State::UntilClose,
        None => State::Body(0),
    }
}

/// Bytes shown safely on a terminal: printable ASCII as is, the rest escaped.
pub fn escape(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_requests_with_bodies() {
        let mut s = Sniffer::new(true);
        let stream = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nX-User: alice\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\nPUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /d HTTP/1.1\r\n\r\n";
        // Feed byte by byte: heads must be found whatever the chunking.
        let mut seen = Vec::new();
        for b in stream.iter() {
            seen.extend(s.feed(&[*b]));
        }
        let paths: Vec<String> = seen
            .iter()
            .filter_map(|x| match x {
                Seen::Head(Head::Request { path, .. }) => Some(path.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(paths, ["/a", "/b", "/c", "/d"]);
        let body: Vec<u8> = seen
            .iter()
            .filter_map(|x| match x {
                Seen::Body(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(body, b"helloabc");
        assert!(
            matches!(&seen[0], Seen::Head(Head::Request { headers, .. }) if headers["x-user"] == "alice")
        );
    }

    #[test]
    fn responses_and_garbage() {
        let mut s = Sniffer::new(false);
        s.pending_methods.push_back("GET".into());
        let seen = s.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert!(matches!(
            &seen[0],
            Seen::Head(Head::Response { status: 200, .. })
        ));
        let mut g = Sniffer::new(true);
        assert!(g.feed(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").is_empty());
        assert!(!g.is_http());
        assert_eq!(escape(b"a\x00\n"), "a\\x00\\n");
    }
}
