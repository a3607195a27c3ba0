//! Agents that share a target: how they find and talk to each other.
//!
//! Several sessions may target the same pod, each with its own agent and its own redirect
//! chain. The kernel hands a redirected connection to ONE of them (the first chain that matches),
//! so agents cooperate:
//!
//! - every agent that subscribes a port listens on the abstract unix socket
//!   `@mirrord-agent/<agent id>`; abstract sockets belong to the network namespace, so exactly
//!   the agents in the target's namespace see each other (listed in `/proc/net/unix`), and
//!   nothing outside the pod can connect;
//! - before stealing a port, an agent asks the others how they use it (`QUERY`), so an
//!   unfiltered steal and a filtered one never coexist (one would take the other's requests);
//! - a request (or a whole connection) that an agent does not take goes on to the next agent
//!   that subscribed the port (`HOP`, carrying the real client address and the agents already
//!   visited, so every agent sees it once and the program sees the real peer), and only after
//!   the last one to the target itself.
//!
//! Wire format: one request line from the caller, one answer line, then (after `ok` to a hop)
//! the client's bytes both ways, unframed:
//!
//! ```text
//! MIRRORD-MESH/1 QUERY <port>                                 -> none | mirror | steal-filtered | steal
//! MIRRORD-MESH/1 HOP <port> <peer> <original> <id>[,<id>...]  -> ok | no
//! ```
//!
//! Lines are at most [`LINE_MAX`] bytes; anything else is answered with `error ...` and closed.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Abstract socket name prefix; the agent id follows.
pub const NAME_PREFIX: &str = "mirrord-agent/";
const MAGIC: &str = "MIRRORD-MESH/1";
/// Longest request or answer line.
pub const LINE_MAX: usize = 512;
/// A peer has this long to connect and answer; a stuck peer is skipped, never waited for.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// How an agent uses a port (the strongest use wins: steal > steal-filtered > mirror).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PortUse {
    None,
    Mirror,
    StealFiltered,
    Steal,
}

impl fmt::Display for PortUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortUse::None => "none",
            PortUse::Mirror => "mirror",
            PortUse::StealFiltered => "steal-filtered",
            PortUse::Steal => "steal",
        })
    }
}

impl std::str::FromStr for PortUse {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<PortUse> {
        Ok(match s {
            "none" => PortUse::None,
            "mirror" => PortUse::Mirror,
            "steal-filtered" => PortUse::StealFiltered,
            "steal" => PortUse::Steal,
            other => bail!("unknown port use {other:?}"),
        })
    }
}

/// What a peer asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Query {
        port: u16,
    },
    Hop {
        port: u16,
        /// The real client.
        peer: SocketAddr,
        /// Where the client connected (the pod's address and `port`).
        original: SocketAddr,
        /// Agents that already had their turn (the caller included).
        visited: Vec<String>,
    },
}

impl Request {
    pub fn encode(&self) -> String {
        match self {
            Request::Query { port } => format!("{MAGIC} QUERY {port}\n"),
            Request::Hop {
                port,
                peer,
                original,
                visited,
            } => format!(
                "{MAGIC} HOP {port} {peer} {original} {}\n",
                visited.join(",")
            ),
        }
    }

    pub fn parse(line: &str) -> Result<Request> {
        let mut words = line.split_ascii_whitespace();
        if words.next() != Some(MAGIC) {
            bail!("not a {MAGIC} request");
        }
        let verb = words.next();
        let port: u16 = words
            .next()
            .context("no port")?
            .parse()
            .context("bad port")?;
        let request = match verb {
            Some("QUERY") => Request::Query { port },
            Some("HOP") => {
                let peer = words.next().context("no peer")?.parse()?;
                let original = words.next().context("no original")?.parse()?;
                let visited: Vec<String> = words
                    .next()
                    .context("no visited list")?
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                for id in &visited {
                    crate::redirect::validate_id(id)?;
                }
                Request::Hop {
                    port,
                    peer,
                    original,
                    visited,
                }
            }
            _ => bail!("unknown request"),
        };
        if words.next().is_some() {
            bail!("trailing words");
        }
        Ok(request)
    }
}

fn socket_addr(agent_id: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    std::os::unix::net::SocketAddr::from_abstract_name(format!("{NAME_PREFIX}{agent_id}"))
}

/// Listens as `agent_id` in the current network namespace. Call it inside the runtime.
pub fn bind(agent_id: &str) -> Result<UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind_addr(&socket_addr(agent_id)?)
        .with_context(|| format!("binding the abstract socket @{NAME_PREFIX}{agent_id}"))?;
    listener.set_nonblocking(true)?;
    Ok(UnixListener::from_std(listener)?)
}

/// The other agents in this network namespace, sorted by id.
pub fn peers(own_id: &str) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    parse_peers(&table, own_id)
}

/// Agent ids in `/proc/net/unix` text (listeners and their connections alike), without
/// `own_id`, sorted and deduplicated.
pub fn parse_peers(table: &str, own_id: &str) -> Vec<String> {
    let prefix = format!("@{NAME_PREFIX}");
    let mut ids: Vec<String> = table
        .lines()
        .filter_map(|l| l.split_ascii_whitespace().last()?.strip_prefix(&prefix))
        .filter(|id| *id != own_id && crate::redirect::validate_id(id).is_ok())
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Reads one `\n`-terminated line, byte by byte so nothing after it is consumed.
pub async fn read_line<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String> {
    let mut line = Vec::new();
    loop {
        let b = stream.read_u8().await.context("reading a mesh line")?;
        if b == b'\n' {
            break;
        }
        if line.len() >= LINE_MAX {
            bail!("mesh line longer than {LINE_MAX} bytes");
        }
        line.push(b);
    }
    String::from_utf8(line).context("mesh line is not UTF-8")
}

/// Connects to agent `id`, sends `request` and returns its answer line and the stream.
async fn ask(id: &str, request: &Request) -> Result<(String, UnixStream)> {
    let exchange = async {
        // Non-blocking connect (a leading NUL names an abstract socket): a peer that stopped
        // accepting fails this at once instead of blocking a runtime thread.
        let mut stream = UnixStream::connect(format!("\0{NAME_PREFIX}{id}")).await?;
        stream.write_all(request.encode().as_bytes()).await?;
        let answer = read_line(&mut stream).await?;
        Ok::<_, anyhow::Error>((answer, stream))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .with_context(|| format!("agent {id} did not answer in time"))?
}

/// How agent `id` uses `port`; `None` when it cannot tell (gone, stuck, another version).
pub async fn query(id: &str, port: u16) -> Option<PortUse> {
    match ask(id, &Request::Query { port }).await {
        Ok((answer, _)) => answer.parse().ok(),
        Err(e) => {
            tracing::debug!(peer = id, "mesh query failed: {e:#}");
            None
        }
    }
}

/// Hands a connection to agent `id`; `None` when it does not take it (no subscriber there, or
/// gone). On `Some`, the stream carries the client's bytes from now on.
pub async fn hop(
    id: &str,
    port: u16,
    peer: SocketAddr,
    original: SocketAddr,
    visited: &[String],
) -> Option<UnixStream> {
    let request = Request::Hop {
        port,
        peer,
        original,
        visited: visited.to_vec(),
    };
    match ask(id, &request).await {
        Ok((answer, stream)) if answer == "ok" => Some(stream),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(peer = id, "mesh hop failed: {e:#}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let hop = Request::Hop {
            port: 80,
            peer: "10.244.0.20:51234".parse().unwrap(),
            original: "[fd00::10]:80".parse().unwrap(),
            visited: vec!["abc".into(), "d-e_f".into()],
        };
        assert_eq!(Request::parse(hop.encode().trim_end()).unwrap(), hop);
        let q = Request::Query { port: 8080 };
        assert_eq!(q.encode(), "MIRRORD-MESH/1 QUERY 8080\n");
        assert_eq!(Request::parse(q.encode().trim_end()).unwrap(), q);
        for bad in [
            "",
            "GET / HTTP/1.1",
            "MIRRORD-MESH/1 QUERY",
            "MIRRORD-MESH/1 QUERY 70000",
            "MIRRORD-MESH/1 QUERY 80 extra",
            "MIRRORD-MESH/1 HOP 80 1.2.3.4:5 1.2.3.4:80",
            "MIRRORD-MESH/1 HOP 80 1.2.3.4:5 1.2.3.4:80 a;b",
            "MIRRORD-MESH/1 HOP 80 x 1.2.3.4:80 a",
            "MIRRORD-MESH/2 QUERY 80",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn port_uses() {
        for u in [
            PortUse::None,
            PortUse::Mirror,
            PortUse::StealFiltered,
            PortUse::Steal,
        ] {
            assert_eq!(u.to_string().parse::<PortUse>().unwrap(), u);
        }
        assert!(
            PortUse::Steal > PortUse::StealFiltered && PortUse::StealFiltered > PortUse::Mirror
        );
    }

    #[test]
    fn peers_from_proc_net_unix() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1001 @mirrord-agent/bbbb\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 1002 @mirrord-agent/bbbb\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1003 @mirrord-agent/aaaa\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1004 @mirrord-agent/self\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1005 @mirrord-agent/bad;id\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1006 /run/other.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 1007\n";
        assert_eq!(parse_peers(table, "self"), ["aaaa", "bbbb"]);
    }

    #[tokio::test]
    async fn read_line_stops_at_the_newline_and_bounds_the_length() {
        let mut input: &[u8] = b"first line\nrest";
        assert_eq!(read_line(&mut input).await.unwrap(), "first line");
        assert_eq!(input, b"rest");
        let long = vec![b'x'; LINE_MAX + 10];
        let mut input: &[u8] = &long;
        assert!(read_line(&mut input).await.is_err());
        let mut eof: &[u8] = b"no newline";
        assert!(read_line(&mut eof).await.is_err());
    }
}
