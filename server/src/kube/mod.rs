//! Kubernetes targets: the cluster connection ([`client`]), target resolution ([`resolve`]),
//! the agent's Job or ephemeral container ([`agent_pod`]), the port-forward transport
//! ([`portforward`], with streams opened ahead of need: [`spares`]) and the target list for IDEs
//! ([`targets`]).
//!
//! Nothing here knows whether the API server is a real cluster or the tests' simulated one.

pub mod agent_pod;
pub mod client;
pub mod portforward;
pub mod resolve;
pub mod spares;
pub mod targets;

use agent_pod::{AgentPlan, KubeAgent};
use anyhow::{Context, Result};
use mirrord_protocol::config::{MirrordConfig, TargetPath};

/// Reports a step of a long start (the CLI's spinner, the daemon's `$/progress`).
pub type ProgressFn = dyn Fn(StartNote<'_>) + Send + Sync;

/// What a start reports.
#[derive(Debug, Clone, Copy)]
pub enum StartNote<'a> {
    /// A step under way (a spinner's message).
    Step(&'a str),
    /// Something the user should read even without a terminal: which container was picked
    /// when there was a choice.
    Notice(&'a str),
}

/// Connects to the cluster, resolves `target` (in `namespace`, else the usual order) and starts
/// its agent.
pub async fn start_agent(
    config: &MirrordConfig,
    target: &TargetPath,
    cli_namespace: Option<&str>,
    token: &str,
    progress: &ProgressFn,
) -> Result<KubeAgent> {
    let connection = client::KubeSettings::from_config(config).connect().await?;
    let namespace = client::target_namespace(cli_namespace, config, &connection.context_namespace);
    let resolved = match target {
        TargetPath::Targetless => None,
        _ => {
            progress(StartNote::Step(&format!(
                "resolving {target} in namespace {namespace}"
            )));
            let t = resolve::resolve(&connection.client, target, &namespace)
                .await
                .with_context(|| format!("resolving {target}"))?;
            if let Some(note) = &t.note {
                progress(StartNote::Notice(note));
                tracing::info!("{note}");
            }
            progress(StartNote::Step(&format!(
                "target: pod {} container {} in {}",
                t.pod, t.container, t.namespace
            )));
            Some(t)
        }
    };
    let plan = AgentPlan {
        name: agent_pod::random_agent_name()?,
        namespace: config
            .agent
            .namespace
            .clone()
            .unwrap_or_else(|| namespace.clone()),
        target: resolved,
        port: agent_pod::random_agent_port()?,
        token: token.to_owned(),
        config: config.agent.clone(),
    };
    agent_pod::check_plan(&plan)?;
    KubeAgent::start(&connection.client, plan, &|step: &str| {
        progress(StartNote::Step(step))
    })
    .await
}
