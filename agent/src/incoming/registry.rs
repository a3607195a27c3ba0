//! The subscription registry: which clients subscribed which port, and how the port's traffic
//! reaches the agent: its redirect rule and listener, or its packet capture (a port whose
//! subscribers all copy, see `capture`). This is the ONE owner of a port's state, its rule and
//! its place in the capture: nothing else adds or removes any of them.
//!
//! Invariants:
//! - Every change (subscribe, unsubscribe) holds `changes` from its first look at the port to
//!   its last step, rule commands included; so two changes of one port never interleave: two
//!   concurrent subscribes cannot both install a rule, and a subscribe cannot slip between an
//!   unsubscribe's removal of the port and of its rule.
//! - A port has an entry in `ports` exactly while its rule exists or it is captured (a change in
//!   progress aside), never both; its rule always points at the entry's listener, and the
//!   capture's port set is exactly the entries marked `captured`.
//! - A port is captured only while none of its subscribers steals, terminates TLS or asked for
//!   the relay; the first one that does moves the port to a redirect for good (until released).
//! - The data path never sees a gone client (`subscribers` skips it): its entries stay only
//!   until its release has removed them, which may wait for rule commands.
//! - Rule commands (`iptables`, `nft`, which may wait seconds for the xtables lock) run on the
//!   blocking pool, never on the async workers, and no std mutex is held across an `.await`:
//!   the data path keeps flowing while a rule change waits.

use super::capture::{self, Capture};
use super::mesh_server::MeshBound;
use super::{Client, Subscriber};
use crate::mesh::PortUse;
use crate::redirect::Redirector;
use anyhow::{bail, Context, Result};
use mirrord_protocol::agent::TrafficMode;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long a released port's listener keeps passing on connections the redirect sent to it
/// before the rule was removed.
const LISTENER_LINGER: Duration = Duration::from_secs(1);

struct PortState {
    /// Set right after the entry is inserted (the accept loop reads the entry); `None` for a
    /// captured port.
    accept_task: Option<JoinHandle<()>>,
    /// Copied by capture rather than redirected.
    captured: bool,
    subscribers: Vec<Subscriber>,
}

pub(super) struct Registry {
    agent_id: String,
    /// Held by every change for its whole duration (see the module invariants).
    changes: tokio::sync::Mutex<()>,
    /// Created by the first subscription, under `changes`.
    redirector: OnceLock<Arc<Redirector>>,
    /// Read by the data path (accept loops, mesh requests); written only under `changes`.
    ports: Mutex<HashMap<u16, PortState>>,
    /// The capture of the captured ports; exists while one is. Written only under `changes`.
    capture: Mutex<Option<Capture>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a rule command on the blocking pool.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a redirect-rule task failed")?
}

impl Registry {
    pub(super) fn new(agent_id: String) -> Registry {
        Registry {
            agent_id,
            changes: tokio::sync::Mutex::new(()),
            redirector: OnceLock::new(),
            ports: Mutex::new(HashMap::new()),
            capture: Mutex::new(None),
        }
    }

    /// Whether `port` is copied by capture (its connections are never redirected here).
    pub(super) fn is_captured(&self, port: u16) -> bool {
        lock(&self.ports).get(&port).is_some_and(|s| s.captured)
    }

    /// The ports marked captured, after a change of `ports`.
    fn captured_ports(&self) -> BTreeSet<u16> {
        lock(&self.ports)
            .iter()
            .filter(|(_, s)| s.captured)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Makes the capture follow the entries marked captured: started by the first, closed
    /// with the last. Under `changes`.
    fn sync_capture(&self, start: impl FnOnce(BTreeSet<u16>) -> Result<Capture>) -> Result<()> {
        let ports = self.captured_ports();
        let mut capture = lock(&self.capture);
        match capture.as_ref() {
            _ if ports.is_empty() => {
                if let Some(c) = capture.take() {
                    c.stop();
                }
            }
            Some(c) => c.set_ports(ports)?,
            None => *capture = Some(start(ports)?),
        }
        Ok(())
    }

    /// The port's live subscribers now (a connection is served with the ones it found): a gone
    /// client's are skipped while its release waits for its turn and its rule commands.
    pub(super) fn subscribers(&self, port: u16) -> Vec<Subscriber> {
        lock(&self.ports)
            .get(&port)
            .map(|s| {
                s.subscribers
                    .iter()
                    .filter(|sub| !sub.client.gone.is_set())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How this agent's subscribers use `port` (what other agents are told).
    pub(super) fn port_use(&self, port: u16) -> PortUse {
        self.subscribers(port)
            .iter()
            .map(|sub| match (sub.mode, &sub.filter) {
                (TrafficMode::Steal, Some(_)) => PortUse::StealFiltered,
                (TrafficMode::Steal, None) => PortUse::Steal,
                // Copies only: the target keeps serving.
                _ => PortUse::Mirror,
            })
            .max()
            .unwrap_or(PortUse::None)
    }

    /// Refuses `sub` early when it cannot coexist with this agent's other subscribers of `port`
    /// (checked again, authoritatively, by [`Registry::subscribe`]).
    pub(super) fn precheck(&self, port: u16, sub: &Subscriber) -> Result<()> {
        check_conflict(&self.subscribers(port), sub, port)
    }

    /// Marks `client` gone and returns the ports it subscribed. A subscribe of it still in
    /// flight either finished before (its port is in the list) or will see the mark and add
    /// nothing: the mark is set before, and the list taken after, every change in progress.
    pub(super) async fn client_gone(&self, client: &Client) -> Vec<u16> {
        client.gone.set();
        let _changing = self.changes.lock().await;
        lock(&self.ports)
            .iter()
            .filter(|(_, s)| s.subscribers.iter().any(|sub| sub.client.id == client.id))
            .map(|(p, _)| *p)
            .collect()
    }

    /// The redirector, created on first use (under `changes`).
    async fn redirector(&self) -> Result<Arc<Redirector>> {
        if let Some(r) = self.redirector.get() {
            return Ok(r.clone());
        }
        let id = self.agent_id.clone();
        let r = off_runtime(move || Redirector::new(&id).context("setting up the port redirect"))
            .await?;
        Ok(self.redirector.get_or_init(|| Arc::new(r)).clone())
    }

    /// Adds `sub` to `port`. The first subscriber decides how the port reaches the agent: by
    /// capture (`start_capture` opens it on first use) when it only copies and asked for capture,
    /// else by a listener and its rule, whose accept loop `start` runs. A captured port moves to
    /// a redirect when a subscriber that needs one joins. `_mesh`: the agent's mesh socket
    /// exists, so another agent that finds this agent's rules also finds it alive (see
    /// `leftovers`).
    pub(super) async fn subscribe(
        &self,
        port: u16,
        sub: Subscriber,
        _mesh: &MeshBound,
        start: impl FnOnce(TcpListener) -> JoinHandle<()>,
        start_capture: impl FnOnce(BTreeSet<u16>) -> Result<Capture>,
    ) -> Result<()> {
        let _changing = self.changes.lock().await;
        if sub.client.gone.is_set() {
            bail!("the client's channel closed");
        }
        let wants_capture = sub.capture && sub.mode != TrafficMode::Steal && sub.tls.is_none();
        let upgrade = {
            let mut ports = lock(&self.ports);
            match ports.get_mut(&port) {
                Some(state) => {
                    check_conflict(&state.subscribers, &sub, port)?;
                    if !state.captured || wants_capture {
                        state.subscribers.retain(|s| s.client.id != sub.client.id);
                        state.subscribers.push(sub.clone());
                        return Ok(());
                    }
                    true
                }
                None => false,
            }
        };
        if !upgrade && wants_capture && self.captured_ports().len() < capture::MAX_PORTS {
            lock(&self.ports).insert(
                port,
                PortState {
                    accept_task: None,
                    captured: true,
                    subscribers: vec![sub],
                },
            );
            if let Err(e) = self.sync_capture(start_capture) {
                lock(&self.ports).remove(&port);
                return Err(e.context(
                    "capturing the port's traffic (set mirror_capture: false to relay it instead)",
                ));
            }
            return Ok(());
        }
        // Dual-stack where the kernel has IPv6, so the port's IPv6 redirect (ip6tables) lands
        // on this listener too; IPv4-only otherwise.
        let listener = match TcpListener::bind(("::", 0)).await {
            Ok(l) => l,
            Err(_) => TcpListener::bind(("0.0.0.0", 0))
                .await
                .context("binding the redirect listener")?,
        };
        let to_port = listener.local_addr()?.port();
        let redirector = self.redirector().await?;
        off_runtime(move || redirector.add(port, to_port)).await?;
        let mut subscribers = vec![];
        if upgrade {
            // The port's connections come through the listener from now on: the capture lets
            // go of it (connections it was copying end there).
            if let Some(state) = lock(&self.ports).get_mut(&port) {
                state.captured = false;
                subscribers = std::mem::take(&mut state.subscribers);
            }
            if let Err(e) = self.sync_capture(|_| bail!("no capture to update")) {
                tracing::warn!(port, "releasing the port from capture: {e:#}");
            }
            subscribers.retain(|s| s.client.id != sub.client.id);
        }
        subscribers.push(sub);
        let mut ports = lock(&self.ports);
        ports.insert(
            port,
            PortState {
                accept_task: None,
                captured: false,
                subscribers,
            },
        );
        // Started after the entry exists, so the first connection already finds its
        // subscriber.
        let task = start(listener);
        if let Some(state) = ports.get_mut(&port) {
            state.accept_task = Some(task);
        }
        Ok(())
    }

    /// Removes `client_id` from `port`; the last one out removes the rule, then the port's
    /// state, and closes the listener a moment later (or takes the port out of the capture).
    pub(super) async fn unsubscribe(&self, client_id: u64, port: u16) {
        let _changing = self.changes.lock().await;
        let (last, captured) = match lock(&self.ports).get(&port) {
            Some(state) if state.subscribers.iter().any(|s| s.client.id == client_id) => (
                state.subscribers.iter().all(|s| s.client.id == client_id),
                state.captured,
            ),
            _ => return,
        };
        if !last {
            if let Some(state) = lock(&self.ports).get_mut(&port) {
                state.subscribers.retain(|s| s.client.id != client_id);
            }
            return;
        }
        if captured {
            lock(&self.ports).remove(&port);
            if let Err(e) = self.sync_capture(|_| bail!("no capture to update")) {
                tracing::warn!(port, "releasing the port from capture: {e:#}");
            }
            tracing::info!(port, "port released");
            return;
        }
        // The rule goes first, the listener after a moment: connections the rule sent here
        // before it went still arrive (their NAT is decided), and the listener passes them on
        // (nobody subscribes any more) instead of the kernel refusing them.
        if let Some(r) = self.redirector.get().cloned() {
            if let Err(e) = off_runtime(move || r.remove(port)).await {
                tracing::warn!(port, "removing the redirect: {e:#}");
            }
        }
        let Some(state) = lock(&self.ports).remove(&port) else {
            return;
        };
        if let Some(task) = state.accept_task {
            tokio::spawn(async move {
                tokio::time::sleep(LISTENER_LINGER).await;
                task.abort();
            });
        }
        tracing::info!(port, "port released");
    }

    /// Removes every rule of this agent (on a clean exit; the guard covers the others).
    pub(super) fn cleanup(&self) {
        if let Some(c) = lock(&self.capture).take() {
            c.stop();
        }
        let Some(r) = self.redirector.get().cloned() else {
            return;
        };
        let remove = move || {
            if let Err(e) = r.cleanup() {
                tracing::warn!("removing the redirect rules: {e:#}");
            }
        };
        // At exit nothing else runs, but the rule commands still stay off the async workers
        // where a runtime can lend the thread.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(remove)
            }
            _ => remove(),
        }
    }
}

fn check_conflict(existing: &[Subscriber], new: &Subscriber, port: u16) -> Result<()> {
    if new.mode != TrafficMode::Steal {
        return Ok(());
    }
    for s in existing
        .iter()
        .filter(|s| s.client.id != new.client.id && s.mode == TrafficMode::Steal)
    {
        let used = match s.filter {
            Some(_) => PortUse::StealFiltered,
            None => PortUse::Steal,
        };
        conflict(used, new.filter.is_some(), port)?;
    }
    Ok(())
}

/// Whether a new steal (filtered or not) of `port` can coexist with another session's `used`:
/// filtered steals share a port; an unfiltered steal shares it with nobody.
pub(super) fn conflict(used: PortUse, new_filtered: bool, port: u16) -> Result<()> {
    match used {
        PortUse::Steal => bail!("port {port} is already stolen whole by another session"),
        PortUse::StealFiltered if !new_filtered => bail!(
            "port {port} is already stolen by another session with an HTTP filter; an unfiltered \
             steal would take its requests"
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(id: u64, mode: TrafficMode) -> Subscriber {
        let (client, _) = super::super::tests::client(id);
        Subscriber {
            client,
            mode,
            filter: None,
            tls: None,
            capture: true,
        }
    }

    /// A gone client's subscriptions still hold the port until they are released, but its
    /// connections already go to the others (or the target).
    #[test]
    fn a_gone_client_is_skipped_before_its_release() {
        let registry = Registry::new("test".into());
        let (stealer, mirror) = (
            subscriber(1, TrafficMode::Steal),
            subscriber(2, TrafficMode::Mirror),
        );
        lock(&registry.ports).insert(
            80,
            PortState {
                accept_task: None,
                captured: false,
                subscribers: vec![stealer.clone(), mirror],
            },
        );
        let ids =
            |r: &Registry| -> Vec<u64> { r.subscribers(80).iter().map(|s| s.client.id).collect() };
        assert_eq!(ids(&registry), [1, 2]);
        assert_eq!(registry.port_use(80), PortUse::Steal);
        stealer.client.gone.set();
        assert_eq!(ids(&registry), [2]);
        assert_eq!(registry.port_use(80), PortUse::Mirror);
        assert_eq!(
            lock(&registry.ports)[&80].subscribers.len(),
            2,
            "still held"
        );
    }
}
