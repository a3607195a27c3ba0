//! A session: one target, one agent, one layer proxy, and the environment that makes a program
//! join it.

use crate::agent::{AgentConnector, AgentControl, AgentHandle, AgentProcess, Link, Reconnect};
use crate::incoming::IncomingRouter;
use crate::proxy::{LayerProxy, ProxyShared};
use crate::traffic::TrafficLog;
use anyhow::{Context, Result};
use mirrord_protocol::config::{MirrordConfig, TargetPath};
use std::path::PathBuf;
use std::sync::Arc;

/// How often an idle control channel to a cluster agent is pinged.
const KEEP_ALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Environment variable carrying the agent's token (read and removed by the agent at start).
pub const AGENT_TOKEN_ENV: &str = "MIRRORD_AGENT_TOKEN";

pub struct SessionOptions {
    pub config: MirrordConfig,
    pub target: TargetPath,
    /// The Kubernetes namespace given on the command line (`-n`), which beats every other
    /// source; ignored for local targets.
    pub namespace: Option<String>,
    pub agent_bin: PathBuf,
    pub layer_path: PathBuf,
    pub runtime_dir: PathBuf,
    /// Hears about each step of a long start (a cluster agent's).
    pub progress: Option<Arc<crate::kube::ProgressFn>>,
}

/// Whether the session reaches its agent, for the people watching (`mirrord exec`'s lines,
/// the daemon's `sessionChanged`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    Ready,
    /// The connection to a cluster agent dropped; programs keep running while the session
    /// reconnects (their lookups fail with `EAI_AGAIN`, their new flows with errors).
    Reconnecting,
    /// Reconnected, but some ports could not be subscribed again (why).
    ResumedWithErrors(String),
    /// The agent is gone for good.
    Lost,
}

pub struct Session {
    pub id: String,
    token: String,
    pub target: TargetPath,
    pub agent: AgentHandle,
    /// The control channel to the agent (its closing is a cluster agent's death).
    pub control: AgentControl,
    pub proxy: LayerProxy,
    /// Live state of the session (processes, ports, traffic).
    pub shared: Arc<ProxyShared>,
    /// session --connection changes--> `mirrord exec`, the daemon
    pub connection: tokio::sync::watch::Receiver<Connection>,
    config_json: String,
    layer_path: PathBuf,
    /// The target process's environment (empty unless `feature.env` is on).
    target_env: Vec<(String, String)>,
    env_config: mirrord_protocol::config::EnvConfig,
    /// `feature.network`, for the syscall supervisor's routing (the layer gets it as JSON).
    pub network: mirrord_protocol::config::NetworkConfig,
}

/// `LD_PRELOAD` for a launch: the launch's own preloads, then the layer (once).
pub fn merge_preload(existing: Option<&str>, layer: &str) -> String {
    match existing.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) if p.split([' ', ':']).any(|e| e == layer) => p.to_owned(),
        Some(p) => format!("{p}:{layer}"),
        None => layer.to_owned(),
    }
}

/// The target process's environment from the agent, when `feature.env` asks for it. A
/// targetless session has no process: nothing.
async fn fetch_target_env(
    opts: &SessionOptions,
    control: &AgentControl,
) -> Result<Vec<(String, String)>> {
    if !opts.config.feature.env.enabled || opts.target == TargetPath::Targetless {
        return Ok(Vec::new());
    }
    use mirrord_protocol::agent::{AgentRequest, AgentResponse};
    match control
        .request(AgentRequest::Env)
        .await
        .context("asking the agent for the target's environment (feature.env)")?
    {
        AgentResponse::Env(vars) => Ok(vars),
        AgentResponse::Error(e) => anyhow::bail!("feature.env: {e}"),
        other => anyhow::bail!("feature.env: the agent answered {other:?}"),
    }
}

/// Turns the control channel's link changes into the session's [`Connection`], subscribing the
/// session's ports again after each reconnect (before it says `Ready`, so that a steal is in
/// place again when people are told the session is back).
async fn follow_link(
    control: AgentControl,
    incoming: Arc<IncomingRouter>,
    traffic: Arc<TrafficLog>,
    connection_tx: tokio::sync::watch::Sender<Connection>,
) {
    let mut link = control.link();
    loop {
        if link.changed().await.is_err() {
            return;
        }
        let state = *link.borrow_and_update();
        match state {
            Link::Reconnecting => {
                traffic.emit(mirrord_protocol::api::TrafficEvent::Error {
                    time: mirrord_protocol::api::now_ms(),
                    message: "the connection to the agent dropped; reconnecting".into(),
                });
                connection_tx.send_replace(Connection::Reconnecting);
            }
            Link::Up => match incoming.resubscribe(&control).await {
                Ok(()) => {
                    connection_tx.send_replace(Connection::Ready);
                }
                Err(why) => {
                    traffic.emit(mirrord_protocol::api::TrafficEvent::Error {
                        time: mirrord_protocol::api::now_ms(),
                        message: why.clone(),
                    });
                    connection_tx.send_replace(Connection::ResumedWithErrors(why));
                }
            },
            Link::Gone => {
                connection_tx.send_replace(Connection::Lost);
                return;
            }
        }
    }
}

/// 32 random bytes, hex: the session token.
fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf)
        .map_err(|e| anyhow::anyhow!("reading random bytes for a token: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl Session {
    pub async fn start(opts: SessionOptions) -> Result<Session> {
        let id = random_hex(8)?;
        let token = random_hex(32)?;
        let (agent, connector) = if opts.target.is_kubernetes() {
            let progress = opts.progress.clone();
            let report = move |note: crate::kube::StartNote<'_>| {
                if let Some(p) = &progress {
                    p(note);
                }
            };
            let kube_agent = crate::kube::start_agent(
                &opts.config,
                &opts.target,
                opts.namespace.as_deref(),
                &token,
                &report,
            )
            .await?;
            let transport = crate::kube::spares::AgentPortForward::new(
                kube_agent.client.clone(),
                kube_agent.namespace.clone(),
                kube_agent.pod.clone(),
                kube_agent.port,
                token.clone(),
            );
            // The first flows find spares too.
            transport.refill();
            let connector = AgentConnector::PortForward(transport);
            (AgentHandle::Kube(kube_agent), connector)
        } else {
            let agent_socket = opts.runtime_dir.join(format!("{id}.agent.sock"));
            let agent =
                AgentProcess::spawn(&opts.agent_bin, &opts.target, agent_socket.clone(), &token)
                    .await?;
            let connector = AgentConnector::Unix {
                path: agent_socket,
                token: token.clone(),
            };
            (AgentHandle::Local(agent), connector)
        };
        // A cluster agent is reached through the API server, which may drop the port-forward
        // (restarts, idle timeouts, a laptop's sleep): the session reconnects until the agent's
        // communication timeout has passed, after which the agent has cleaned up and exited.
        let reconnect = match &agent {
            AgentHandle::Kube(_) => Some(Reconnect {
                give_up_after: std::time::Duration::from_secs(
                    u64::from(opts.config.agent.communication_timeout.unwrap_or(
                        mirrord_protocol::config::AgentConfig::DEFAULT_COMMUNICATION_TIMEOUT,
                    )) + 1,
                ),
            }),
            AgentHandle::Local(_) => None,
        };
        let opened =
            AgentControl::open_with(&connector, crate::agent::REQUEST_TIMEOUT, reconnect).await;
        let (control, event_rx) = match opened {
            Ok(c) => c,
            Err(e) => {
                // Invariant: a failed start leaves no agent behind (a cluster agent's Job
                // would otherwise wait for its communication timeout).
                agent.stop(None).await;
                return Err(e.context("opening the agent's control channel"));
            }
        };
        if let AgentHandle::Kube(_) = &agent {
            control.keep_alive(KEEP_ALIVE_EVERY);
        }
        let target_env = match fetch_target_env(&opts, &control).await {
            Ok(env) => env,
            Err(e) => {
                agent.stop(Some(&control)).await;
                return Err(e);
            }
        };
        // `MIRRORD_SESSION_RELAY=1` keeps flows on the session's own data listeners (the path a
        // remote agent needs), so that path stays exercised with local targets too. A cluster
        // agent has no listener on this machine: its flows always take the session's.
        // The same holds for stolen connections, which a local agent delivers itself.
        let direct = match &agent {
            AgentHandle::Local(_)
                if std::env::var("MIRRORD_SESSION_RELAY").is_ok_and(|v| v == "1") =>
            {
                Vec::new()
            }
            AgentHandle::Local(p) => p.data_addrs.clone(),
            AgentHandle::Kube(_) => Vec::new(),
        };
        let traffic = Arc::new(TrafficLog::default());
        let incoming = match IncomingRouter::new(
            opts.config.feature.network.incoming.clone(),
            traffic.clone(),
            !direct.is_empty(),
        ) {
            Ok(i) => i,
            Err(e) => {
                agent.stop(Some(&control)).await;
                return Err(e.context("feature.network.incoming"));
            }
        };
        tokio::spawn(incoming.clone().run(event_rx, connector.clone()));
        let (connection_tx, connection_rx) = tokio::sync::watch::channel(Connection::Ready);
        tokio::spawn(follow_link(
            control.clone(),
            incoming.clone(),
            traffic.clone(),
            connection_tx,
        ));
        let shared = Arc::new(ProxyShared {
            token: token.clone(),
            connector,
            control: control.clone(),
            incoming,
            next_process: std::sync::atomic::AtomicU64::new(1),
            traffic,
            processes: Default::default(),
            names: Default::default(),
        });
        let proxy = LayerProxy::start(
            opts.runtime_dir.join(format!("{id}.sock")),
            shared.clone(),
            direct,
        )
        .await;
        let proxy = match proxy {
            Ok(p) => p,
            Err(e) => {
                agent.stop(Some(&control)).await;
                return Err(e);
            }
        };
        let config_json =
            serde_json::to_string(&opts.config).context("serialising the configuration")?;
        tracing::info!(session = %id, target = %opts.target, agent = %agent.describe(), "session started");
        Ok(Session {
            id,
            token,
            target: opts.target,
            agent,
            control,
            proxy,
            shared,
            connection: connection_rx,
            config_json,
            layer_path: opts.layer_path,
            target_env,
            env_config: opts.config.feature.env.clone(),
            network: opts.config.feature.network.clone(),
        })
    }

    /// The variables `feature.env` gives a program launched into this session (see
    /// [`crate::remote_env`]); `launch_keeps` names the launch configuration's own variables,
    /// `cwd` is where a relative `env_file` is looked for.
    pub fn program_env(
        &self,
        launch_keeps: &dyn Fn(&str) -> bool,
        cwd: Option<&std::path::Path>,
    ) -> Result<crate::remote_env::ProgramEnv> {
        let file = crate::remote_env::read_env_file(&self.env_config, cwd)?;
        Ok(crate::remote_env::program_env(
            &self.env_config,
            &self.target_env,
            file.as_deref(),
            launch_keeps,
        ))
    }

    /// Environment that makes a program join this session. `LD_PRELOAD` keeps whatever the
    /// caller's environment already preloads.
    pub fn launch_env(&self, existing_preload: Option<&str>) -> Vec<(String, String)> {
        let preload = merge_preload(existing_preload, &self.layer_path.display().to_string());
        vec![
            ("LD_PRELOAD".into(), preload),
            ("MIRRORD_SESSION".into(), self.id.clone()),
            (
                "MIRRORD_PROXY_ADDR".into(),
                format!("unix:{}", self.proxy.control_path.display()),
            ),
            ("MIRRORD_SESSION_TOKEN".into(), self.token.clone()),
            ("MIRRORD_CONFIG".into(), self.config_json.clone()),
        ]
    }

    /// The token a process presents to join this session.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The target's `/etc/resolv.conf` and `/etc/hosts`, from the agent.
    pub async fn target_resolver_files(&self) -> Result<(String, String)> {
        use mirrord_protocol::agent::{AgentRequest, AgentResponse};
        match self.control.request(AgentRequest::ResolverFiles).await? {
            AgentResponse::ResolverFiles { resolv_conf, hosts } => Ok((resolv_conf, hosts)),
            other => anyhow::bail!("the agent answered {other:?} for the resolver files"),
        }
    }

    pub async fn stop(self) {
        drop(self.proxy);
        self.agent.stop(Some(&self.control)).await;
    }
}
