//! This agent's side of the mesh (see `crate::mesh`): answering other agents of the target, and
//! asking them before a steal and when passing a connection on.

use super::registry::conflict;
use super::{original_dst::connect_unredirected, BoxIo, IncomingState, Subscriber};
use crate::mesh;
use anyhow::{Context, Result};
use mirrord_protocol::agent::TrafficMode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Proof that this agent's mesh socket is bound. Creating redirect rules needs one
/// (`Registry::subscribe`), which keeps the invariant a new agent relies on to tell the rules
/// of dead agents from those of live ones: an agent's rules never exist before its socket.
pub(super) struct MeshBound(());

impl IncomingState {
    /// Starts answering the other agents of the target (once).
    pub(super) fn ensure_mesh(self: &Arc<Self>) -> Result<MeshBound> {
        let mut task = self.mesh_task.lock().unwrap_or_else(|p| p.into_inner());
        if task.is_none() {
            let listener = mesh::bind(&self.agent_id)?;
            let me = self.clone();
            *task = Some(tokio::spawn(async move { me.mesh_loop(listener).await }));
        }
        Ok(MeshBound(()))
    }

    async fn mesh_loop(self: Arc<Self>, listener: tokio::net::UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.mesh_request(stream).await {
                            tracing::debug!("mesh request: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept on the mesh socket failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// One request of another agent (see `mesh`).
    async fn mesh_request(self: Arc<Self>, mut stream: UnixStream) -> Result<()> {
        let line = tokio::time::timeout(mesh::TIMEOUT, mesh::read_line(&mut stream))
            .await
            .context("no mesh request in time")??;
        let request = match mesh::Request::parse(&line) {
            Ok(r) => r,
            Err(e) => {
                stream.write_all(format!("error {e}\n").as_bytes()).await?;
                return Ok(());
            }
        };
        match request {
            mesh::Request::Query { port } => {
                let answer = format!("{}\n", self.registry.port_use(port));
                stream.write_all(answer.as_bytes()).await?;
                Ok(())
            }
            mesh::Request::Hop {
                port,
                peer,
                original,
                mut visited,
            } => {
                let subscribers = self.registry.subscribers(port);
                // A captured port: this agent copies the connection from the packets it sees in
                // the namespace wherever the connection goes, so it needs no hand-over (taking it
                // would only add a hop and a second copy).
                if subscribers.is_empty()
                    || visited.contains(&self.agent_id)
                    || self.registry.is_captured(port)
                {
                    stream.write_all(b"no\n").await?;
                    return Ok(());
                }
                stream.write_all(b"ok\n").await?;
                visited.push(self.agent_id.clone());
                self.serve(Box::new(stream), peer, original, port, subscribers, visited)
                    .await
            }
        }
    }

    /// Refuses a steal that cannot coexist with how the other agents use `port`.
    pub(super) async fn check_other_agents(&self, port: u16, new: &Subscriber) -> Result<()> {
        if new.mode != TrafficMode::Steal {
            return Ok(());
        }
        for id in mesh::peers(&self.agent_id) {
            if let Some(used) = mesh::query(&id, port).await {
                conflict(used, new.filter.is_some(), port)?;
            }
        }
        Ok(())
    }

    /// Where what this agent does not take goes: the next agent (by id) that subscribed `port`
    /// and has not had its turn, else the target itself.
    pub(super) async fn next_hop(
        &self,
        port: u16,
        peer: SocketAddr,
        original: SocketAddr,
        visited: &[String],
    ) -> Result<BoxIo> {
        for id in mesh::peers(&self.agent_id) {
            if visited.contains(&id) {
                continue;
            }
            if let Some(stream) = mesh::hop(&id, port, peer, original, visited).await {
                tracing::debug!(port, %peer, next = id, "handed over to the next agent");
                return Ok(Box::new(stream));
            }
        }
        Ok(Box::new(connect_unredirected(original).await?))
    }
}
