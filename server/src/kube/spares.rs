//! The port-forward transport to a cluster agent, with streams opened ahead of need.
//!
//! Through `pods/portforward` a new stream costs a TLS handshake with the API server, an HTTP
//! upgrade, and the API server's own connect to the agent's port: about a millisecond and a
//! half on a quiet machine, against a fraction of that for the request it carries. So the session
//! keeps a few streams open and authenticated ([`AgentChannel::Spare`]); a new flow takes one
//! and names its channel in a second hello, one round trip instead of a new WebSocket. The pool
//! is refilled after each take, never ahead of use: an idle session holds a few idle streams and
//! opens nothing.

use crate::agent::{hello_exchange, AgentStream, HELLO_TIMEOUT};
use anyhow::{anyhow, Result};
use mirrord_protocol::agent::AgentChannel;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Spare streams kept ready: a page's burst of connections mostly finds one.
const SPARES: usize = 4;
/// A spare older than this is closed instead of used: after a laptop's sleep or a network
/// change its TCP connection to the API server may be half-open, and a flow must not wait on
/// it. Streams that young are nearly always alive.
const SPARE_MAX_AGE: Duration = Duration::from_secs(60);
/// How long a spare may take to welcome its channel before the flow opens a new stream instead
/// (a live one answers within one round trip).
const SPARE_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts to open one port-forward stream: a dropped WebSocket upgrade is retried, since the
/// API server (or a proxy before it) may refuse one now and then.
const PORT_FORWARD_ATTEMPTS: u32 = 3;

/// Where the agent is and how to reach it; shared by every clone of the session's connector.
pub struct AgentPortForward {
    client: kube::Client,
    namespace: String,
    pod: String,
    port: u16,
    token: String,
    pool: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    /// Authenticated spares, oldest first, with when each was opened.
    spares: Vec<(Instant, AgentStream)>,
    /// A refill task is running.
    filling: bool,
    /// The agent refused a spare (it speaks no spares): flows open their own streams.
    disabled: bool,
}

impl AgentPortForward {
    pub fn new(
        client: kube::Client,
        namespace: String,
        pod: String,
        port: u16,
        token: String,
    ) -> Arc<Self> {
        Arc::new(AgentPortForward {
            client,
            namespace,
            pod,
            port,
            token,
            pool: Mutex::new(Pool::default()),
        })
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new authenticated channel to the agent: a spare when one is ready (data channels only),
    /// else a new port-forward stream.
    pub async fn open(self: &Arc<Self>, channel: AgentChannel) -> Result<AgentStream> {
        match channel {
            AgentChannel::Control | AgentChannel::Spare => {}
            AgentChannel::ResumeControl => {
                // The connection dropped: the spares went with it.
                self.pool().spares.clear();
            }
            AgentChannel::Tcp { .. } | AgentChannel::Udp { .. } | AgentChannel::Incoming { .. } => {
                let spare = self.take_spare();
                self.refill();
                if let Some(mut stream) = spare {
                    match hello_exchange(
                        &mut stream,
                        &self.token,
                        channel.clone(),
                        SPARE_ANSWER_TIMEOUT,
                    )
                    .await
                    {
                        Ok(()) => return Ok(stream),
                        // Closed under us (a cut port-forward, an agent restart): a new stream
                        // serves the flow; a refusal of the channel itself comes again there.
                        Err(e) => {
                            tracing::debug!("a spare stream failed ({e:#}); opening a new one")
                        }
                    }
                }
            }
        }
        let mut stream = self.open_stream().await?;
        hello_exchange(&mut stream, &self.token, channel, HELLO_TIMEOUT).await?;
        Ok(stream)
    }

    fn take_spare(&self) -> Option<AgentStream> {
        let mut pool = self.pool();
        // Oldest first: the aged ones at the front are closed.
        pool.spares
            .retain(|(opened, _)| opened.elapsed() < SPARE_MAX_AGE);
        pool.spares.pop().map(|(_, s)| s)
    }

    /// Tops the pool up on a task of its own, unless one is already doing it. The task holds the
    /// transport only while it opens a stream, so the end of the session drops the pool.
    pub fn refill(self: &Arc<Self>) {
        {
            let mut pool = self.pool();
            if pool.filling || pool.disabled || pool.spares.len() >= SPARES {
                return;
            }
            pool.filling = true;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(this) = weak.upgrade() else { return };
                let opened = this.open_spare().await;
                let mut pool = this.pool();
                match opened {
                    Ok(stream) => pool.spares.push((Instant::now(), stream)),
                    Err(Refill::Refused(reason)) => {
                        tracing::debug!("the agent keeps no spare streams: {reason}");
                        pool.disabled = true;
                    }
                    Err(Refill::Failed(e)) => {
                        // Tried again after the next take; flows open their own meanwhile.
                        tracing::debug!("opening a spare stream: {e:#}");
                        pool.filling = false;
                        return;
                    }
                }
                if pool.disabled || pool.spares.len() >= SPARES {
                    pool.filling = false;
                    return;
                }
            }
        });
    }

    async fn open_spare(&self) -> Result<AgentStream, Refill> {
        let mut stream = self.open_stream().await.map_err(Refill::Failed)?;
        match hello_exchange(&mut stream, &self.token, AgentChannel::Spare, HELLO_TIMEOUT).await {
            Ok(()) => Ok(stream),
            Err(e) if e.downcast_ref::<crate::agent::Refused>().is_some() => {
                Err(Refill::Refused(format!("{e:#}")))
            }
            Err(e) => Err(Refill::Failed(e)),
        }
    }

    /// A new port-forward stream to the agent's port, before any hello.
    async fn open_stream(&self) -> Result<AgentStream> {
        let mut attempt = 1;
        loop {
            match super::portforward::open(&self.client, &self.namespace, &self.pod, self.port)
                .await
            {
                Ok(s) => return Ok(Box::new(s)),
                Err(e)
                    if attempt < PORT_FORWARD_ATTEMPTS
                        && !matches!(&e, kube::Error::Api(s) if s.code == 403 || s.code == 404) =>
                {
                    tracing::debug!(attempt, "port-forward to the agent failed: {e}");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(e) => {
                    return Err(anyhow!(
                        "cannot port-forward to the agent (pod {} port {} in {}): {}",
                        self.pod,
                        self.port,
                        self.namespace,
                        super::resolve::describe_kube_error(&e)
                    ))
                }
            }
        }
    }
}

enum Refill {
    /// The agent said no to a spare.
    Refused(String),
    /// The stream could not be opened or answered nothing.
    Failed(anyhow::Error),
}
