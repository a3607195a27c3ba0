//! Rules of agents that are gone: an agent killed together with its guard (a container kill
//! takes both) leaves its redirect behind, and the pod's port stays dead until someone removes
//! it. Every new agent removes such leftovers when it starts.
//!
//! Which agent is gone: every agent binds its mesh socket `@mirrord-agent/<id>` (in the
//! target's namespace) before it creates any rule (`MeshBound`), and the kernel drops an
//! abstract socket with the last process that holds it. So rules of id X whose socket refuses
//! connections belong to a dead agent; a live agent, however far into its start, either has no
//! rules yet or answers. When the socket cannot be judged (a timeout, another error) the rules
//! stay.

use crate::mesh;
use crate::redirect;
use std::time::Duration;

/// How long a connect to another agent's mesh socket may take before it counts as alive.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether agent `id` is certainly gone: its mesh socket refuses connections (or was never
/// bound, which a live agent with rules cannot be).
async fn certainly_gone(id: &str) -> bool {
    let name = format!("\0{}{id}", mesh::NAME_PREFIX);
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(name)).await {
        Ok(Ok(_)) => false,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Err(_) => false,
    }
}

/// Removes the rules of every gone agent in the current namespace (never `own_id`'s, never a
/// live agent's). Rule commands run on the blocking pool.
pub async fn sweep(own_id: &str) {
    let ids = match tokio::task::spawn_blocking(redirect::agents_with_rules).await {
        Ok(Ok(ids)) => ids,
        Ok(Err(e)) => {
            tracing::debug!("listing other agents' rules: {e:#}");
            return;
        }
        Err(e) => {
            tracing::warn!("listing other agents' rules: {e}");
            return;
        }
    };
    for id in ids.into_iter().filter(|id| id != own_id) {
        if !certainly_gone(&id).await {
            continue;
        }
        let cleanup_id = id.clone();
        match tokio::task::spawn_blocking(move || redirect::cleanup_agent(&cleanup_id)).await {
            Ok(Ok(())) => tracing::warn!(agent = %id, "removed the rules of a dead agent"),
            Ok(Err(e)) => tracing::warn!(agent = %id, "removing a dead agent's rules: {e:#}"),
            Err(e) => tracing::warn!(agent = %id, "removing a dead agent's rules: {e}"),
        }
    }
}
