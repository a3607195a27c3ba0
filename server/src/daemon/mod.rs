//! The IDE daemon's core: sessions owned by clients, the `mirrord/*` methods, and notifications.
//! Transports (`lsp` for stdio, `ws` for WebSocket) translate JSON-RPC to calls on [`Daemon`].

pub mod config_lsp;
pub mod lsp;
pub mod targets;
pub mod ws;

use crate::config_file::{self, ConfigError};
use crate::session::{Session, SessionOptions};
use mirrord_protocol::api::*;
use mirrord_protocol::config::{MirrordConfig, TargetPath};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A connected IDE (the stdio peer, or one WebSocket connection).
pub type ClientId = u64;

/// What a transport must deliver to its peer.
pub trait Notifier: Send + Sync {
    fn traffic(&self, n: TrafficNotification);
    fn session_changed(&self, n: SessionChanged);
    /// Long-step progress: `Begin(title)`, `Report(message)`, `End(message)`.
    fn progress(&self, token: &str, step: Progress);
}

#[derive(Debug, Clone)]
pub enum Progress {
    Begin(String),
    Report(String),
    End(String),
}

/// A method failed: `kind` is for programs (the JSON-RPC error's `data`), `message` for a
/// person.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    /// The JSON-RPC error's `data`.
    pub fn data(&self) -> ErrorData {
        ErrorData { kind: self.kind }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::new(ErrorKind::Internal, format!("{e:#}"))
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        ApiError::new(ErrorKind::Config, e.to_string())
    }
}

pub struct DaemonOptions {
    pub agent_bin: PathBuf,
    pub layer_path: PathBuf,
    pub runtime_dir: PathBuf,
    /// A session with no process for this long ends.
    pub idle_timeout: Duration,
}

struct ManagedSession {
    id: String,
    owner: ClientId,
    /// Same key (target, config file, resolved config) → the session is reused by a new launch.
    key: String,
    target: String,
    config_path: Option<PathBuf>,
    started_at: u64,
    state: Mutex<SessionState>,
    env: BTreeMap<String, String>,
    session: tokio::sync::Mutex<Option<Session>>,
    shared: Arc<crate::proxy::ProxyShared>,
    agent_pid: Option<u32>,
    /// Where the agent runs, for messages.
    agent_desc: String,
    notifier: Arc<dyn Notifier>,
    /// Debug from the browser: set when the session steals with a header filter.
    browser: Option<mirrord_protocol::api::BrowserSetup>,
    /// session --connection to its agent--> `sessionChanged` (reconnecting / ready)
    connection: tokio::sync::watch::Receiver<crate::session::Connection>,
}

impl ManagedSession {
    fn set_state(
        &self,
        state: SessionState,
        message: Option<String>,
        reason: Option<ChangeReason>,
    ) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.notifier.session_changed(SessionChanged {
            session_id: self.id.clone(),
            state,
            message,
            reason,
        });
    }

    fn state(&self) -> SessionState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Daemon {
    opts: DaemonOptions,
    sessions: Mutex<HashMap<String, Arc<ManagedSession>>>,
    next_progress: std::sync::atomic::AtomicU64,
    /// Serialises session starts so two launches of one config share one agent.
    start_lock: tokio::sync::Mutex<()>,
    /// Watches the config files of running sessions.
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

/// Variables a launch must not pass on to the debuggee.
const ENV_TO_UNSET: &[&str] = &["MIRRORD_ACTIVE", "MIRRORD_CONFIG_FILE"];

impl Daemon {
    pub fn new(opts: DaemonOptions) -> Arc<Daemon> {
        let daemon = Arc::new(Daemon {
            opts,
            sessions: Mutex::new(HashMap::new()),
            next_progress: std::sync::atomic::AtomicU64::new(1),
            start_lock: tokio::sync::Mutex::new(()),
            watcher: Mutex::new(None),
        });
        daemon.clone().start_watcher();
        daemon
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ManagedSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn session(&self, id: &str) -> Result<Arc<ManagedSession>, ApiError> {
        self.sessions()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorKind::NoSession, format!("no session {id}")))
    }

    /// The targets to offer: with a usable kubeconfig, the namespace's cluster targets (and the
    /// namespaces to switch to), else the targets on this machine.
    pub async fn list_targets(
        &self,
        params: ListTargetsParams,
    ) -> Result<ListTargetsResult, ApiError> {
        let start = StartSessionParams {
            workspace_folder: params.workspace_folder.clone(),
            config_path: params.config_path.clone(),
            ..Default::default()
        };
        let config = match resolve_config_path(&start) {
            Some(p) => config_file::load(&p)?,
            None => MirrordConfig::default(),
        };
        let settings = crate::kube::client::KubeSettings::from_config(&config);
        if !settings.kubeconfig_exists() {
            return Ok(ListTargetsResult {
                targets: targets::local_targets(),
                namespaces: None,
            });
        }
        let connection = settings
            .connect()
            .await
            .map_err(|e| ApiError::new(ErrorKind::Cluster, format!("{e:#}")))?;
        let namespace = crate::kube::client::target_namespace(
            params.namespace.as_deref(),
            &config,
            &connection.context_namespace,
        );
        let list = crate::kube::targets::list(&connection.client, &namespace)
            .await
            .map_err(|e| ApiError::new(ErrorKind::Cluster, format!("{e:#}")))?;
        let namespaces = crate::kube::targets::namespaces(&connection.client)
            .await
            .unwrap_or_else(|| vec![namespace.clone()]);
        Ok(ListTargetsResult {
            targets: list,
            namespaces: Some(namespaces),
        })
    }

    pub fn verify_config(&self, params: VerifyConfigParams) -> VerifyConfigResult {
        let path = PathBuf::from(&params.path);
        match config_file::load_with_warnings(&path) {
            Ok(loaded) => VerifyConfigResult {
                ok: true,
                target: loaded.config.target.and_then(|t| t.path),
                diagnostics: loaded
                    .warnings
                    .iter()
                    .map(|w| ConfigDiagnostic {
                        message: w.message(),
                        line: w.line as u32,
                        column: w.column as u32,
                        severity: "warning".into(),
                    })
                    .collect(),
            },
            Err(e) => VerifyConfigResult {
                ok: false,
                target: None,
                diagnostics: vec![ConfigDiagnostic {
                    message: e.message,
                    line: e.line as u32,
                    column: e.column as u32,
                    severity: "error".into(),
                }],
            },
        }
    }

    pub async fn start_session(
        self: &Arc<Self>,
        client: ClientId,
        notifier: Arc<dyn Notifier>,
        params: StartSessionParams,
    ) -> Result<StartSessionResult, ApiError> {
        let config_path = resolve_config_path(&params);
        let config = match &config_path {
            Some(p) => config_file::load(p)?,
            None => MirrordConfig::default(),
        };
        let target_spec = params
            .target
            .clone()
            .or_else(|| config.target.as_ref().and_then(|t| t.path.clone()))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NoTarget,
                    "no target: choose one (mirrord/listTargets) or set \"target\" in the configuration",
                )
            })?;
        let target =
            TargetPath::parse(&target_spec).map_err(|e| ApiError::new(ErrorKind::BadTarget, e))?;
        // The picker's namespace, else the launch's MIRRORD_TARGET_NAMESPACE (the daemon's own
        // environment is not the launch's).
        let namespace = params.namespace.clone().or_else(|| {
            params
                .launch
                .as_ref()
                .and_then(|l| l.env.get(mirrord_protocol::config::TARGET_NAMESPACE_ENV))
                .cloned()
        });
        let key = format!(
            "{target}|{}|{}|{}",
            namespace.as_deref().unwrap_or_default(),
            config_path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            serde_json::to_string(&config).unwrap_or_default()
        );
        let _starting = self.start_lock.lock().await;
        // A relaunch with the same configuration joins the running session: no new agent.
        let reusable = self
            .sessions()
            .values()
            .find(|s| {
                // A reconnecting session comes back by itself: a new launch joins it.
                s.owner == client
                    && s.key == key
                    && matches!(s.state(), SessionState::Ready | SessionState::Reconnecting)
            })
            .cloned();
        if let Some(s) = reusable {
            tracing::info!(session = %s.id, "launch reuses the running session");
            // The same session, but this launch's own preloads and variables.
            let mut env = s.env.clone();
            let launch_preload = params.launch.as_ref().and_then(|l| l.env.get("LD_PRELOAD"));
            env.insert(
                "LD_PRELOAD".into(),
                crate::session::merge_preload(
                    launch_preload.map(String::as_str),
                    &self.opts.layer_path.display().to_string(),
                ),
            );
            // The first launch's `feature.env` variables may include names this launch sets
            // itself: those stay the launch's.
            if let Some(launch) = &params.launch {
                env.retain(|name, _| {
                    crate::remote_env::is_protected(name) || !launch.env.contains_key(name)
                });
            }
            let program_env = match s.session.lock().await.as_ref() {
                Some(session) => program_env_for(session, &params)?,
                None => Default::default(),
            };
            let env_to_unset = merge_program_env(&mut env, program_env, &params);
            return Ok(StartSessionResult {
                session_id: s.id.clone(),
                env,
                env_to_unset,
            });
        }
        let token = format!(
            "mirrord-start-{}",
            self.next_progress
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        notifier.progress(
            &token,
            Progress::Begin(format!("mirrord: starting the agent for {target}")),
        );
        let started = Instant::now();
        let browser = crate::browser::setup(&config);
        let report_to = notifier.clone();
        let report_token = token.clone();
        let opts = SessionOptions {
            config,
            target: target.clone(),
            namespace,
            agent_bin: self.opts.agent_bin.clone(),
            layer_path: self.opts.layer_path.clone(),
            runtime_dir: self.opts.runtime_dir.clone(),
            progress: Some(Arc::new(move |note: crate::kube::StartNote<'_>| {
                let (crate::kube::StartNote::Step(m) | crate::kube::StartNote::Notice(m)) = note;
                report_to.progress(&report_token, Progress::Report(m.to_owned()))
            })),
        };
        let session = match Session::start(opts).await {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("mirrord could not start a session on {target}: {e:#}");
                notifier.progress(&token, Progress::End(msg.clone()));
                return Err(ApiError::new(ErrorKind::SessionStart, msg));
            }
        };
        notifier.progress(
            &token,
            Progress::End(format!(
                "agent ready in {} ms",
                started.elapsed().as_millis()
            )),
        );
        let program_env = match program_env_for(&session, &params) {
            Ok(e) => e,
            Err(e) => {
                session.stop().await;
                return Err(e);
            }
        };
        let mut env: BTreeMap<String, String> = session
            .launch_env(
                params
                    .launch
                    .as_ref()
                    .and_then(|l| l.env.get("LD_PRELOAD"))
                    .map(String::as_str),
            )
            .into_iter()
            .collect();
        let env_to_unset = merge_program_env(&mut env, program_env, &params);
        let managed = Arc::new(ManagedSession {
            id: session.id.clone(),
            owner: client,
            key,
            target: target.to_string(),
            config_path: config_path.clone(),
            started_at: now_ms(),
            state: Mutex::new(SessionState::Starting),
            env: env.clone(),
            shared: session.shared.clone(),
            agent_pid: session.agent.pid(),
            agent_desc: session.agent.describe(),
            connection: session.connection.clone(),
            session: tokio::sync::Mutex::new(Some(session)),
            notifier: notifier.clone(),
            browser,
        });
        self.sessions().insert(managed.id.clone(), managed.clone());
        if let Some(p) = &config_path {
            self.watch(p);
        }
        managed.set_state(
            SessionState::Ready,
            Some(format!("{} on {target}", managed.agent_desc)),
            None,
        );
        self.clone().supervise(managed.clone());
        Ok(StartSessionResult {
            session_id: managed.id.clone(),
            env,
            env_to_unset,
        })
    }

    /// Pumps the session's traffic to its client, reports the agent's death, ends idle sessions.
    fn supervise(self: Arc<Self>, s: Arc<ManagedSession>) {
        let mut traffic_rx = s.shared.traffic.subscribe();
        // Invariant: the pump holds neither the session nor its shared state, only what it
        // writes with. Holding them kept the traffic log's sender alive, so `recv` never ended
        // and every stopped session (its agent control socket included) leaked; now dropping
        // the session closes the broadcast and ends the pump.
        let session_id = s.id.clone();
        let notifier = s.notifier.clone();
        tokio::spawn(async move {
            loop {
                match traffic_rx.recv().await {
                    Ok(event) => notifier.traffic(TrafficNotification {
                        session_id: session_id.clone(),
                        event,
                    }),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(session = %session_id, "traffic view dropped {n} events");
                    }
                    Err(_) => return,
                }
            }
        });
        let mut connection = s.connection.clone();
        let followed = s.clone();
        tokio::spawn(async move {
            use crate::session::Connection;
            while connection.changed().await.is_ok() {
                let now = connection.borrow_and_update().clone();
                // Invariant: a stopped or failed session stays so; only a live one moves
                // between ready and reconnecting.
                if matches!(
                    followed.state(),
                    SessionState::Stopped | SessionState::Error
                ) {
                    return;
                }
                match now {
                    Connection::Reconnecting => followed.set_state(
                        SessionState::Reconnecting,
                        Some(format!(
                            "the connection to the {} dropped; reconnecting (programs keep \
                             running; their lookups and new connections fail meanwhile)",
                            followed.agent_desc
                        )),
                        Some(ChangeReason::ConnectionLost),
                    ),
                    Connection::Ready => followed.set_state(
                        SessionState::Ready,
                        Some(format!("reconnected to the {}", followed.agent_desc)),
                        Some(ChangeReason::Reconnected),
                    ),
                    Connection::ResumedWithErrors(why) => followed.set_state(
                        SessionState::Ready,
                        Some(format!(
                            "reconnected to the {}, but {why}",
                            followed.agent_desc
                        )),
                        Some(ChangeReason::Reconnected),
                    ),
                    // The supervisor below reports the agent's end.
                    Connection::Lost => return,
                }
            }
        });
        let idle = self.opts.idle_timeout;
        tokio::spawn(async move {
            let mut idle_since = Instant::now();
            let mut joined = s.shared.joined();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let mut guard = s.session.lock().await;
                let Some(session) = guard.as_mut() else {
                    return;
                };
                // Has the agent died? (try_wait does not block.)
                if let Some(why) = session.agent.try_exit(&session.control) {
                    drop(guard);
                    let msg = format!(
                        "{why}; programs of this session get connection errors. Start the session again."
                    );
                    s.shared.traffic.emit(TrafficEvent::Error {
                        time: now_ms(),
                        message: msg.clone(),
                    });
                    s.set_state(
                        SessionState::Error,
                        Some(msg),
                        Some(ChangeReason::AgentExited),
                    );
                    self.stop_session_internal(&s.id, None).await;
                    return;
                }
                // Invariant: a process that joined since the last tick is use, even if it has
                // already left. A program shorter than a tick (a script, a test run) is rarely
                // seen in `processes`, and a session relaunched every few minutes for such
                // programs would otherwise end as idle under them.
                let joined_now = s.shared.joined();
                if joined_now != joined || !s.shared.processes().is_empty() {
                    joined = joined_now;
                    idle_since = Instant::now();
                } else if idle_since.elapsed() >= idle {
                    drop(guard);
                    tracing::info!(session = %s.id, "idle, stopping");
                    let why = format!(
                        "no program used the session for {} s (--idle-timeout-secs)",
                        idle.as_secs()
                    );
                    self.stop_session_internal(&s.id, Some(why)).await;
                    return;
                }
            }
        });
    }

    /// Stops session `id`; `why` goes with its `stopped` notification (for people).
    async fn stop_session_internal(&self, id: &str, why: Option<String>) {
        let Some(s) = self.sessions().remove(id) else {
            return;
        };
        if let Some(session) = s.session.lock().await.take() {
            session.stop().await;
        }
        if s.state() != SessionState::Error {
            s.set_state(SessionState::Stopped, why, None);
        } else {
            *s.state.lock().unwrap_or_else(|p| p.into_inner()) = SessionState::Stopped;
        }
    }

    pub async fn stop_session(&self, params: SessionIdParams) -> Result<Empty, ApiError> {
        self.session(&params.session_id)?;
        self.stop_session_internal(&params.session_id, None).await;
        Ok(Empty {})
    }

    /// The client went away: its sessions end.
    pub async fn client_gone(&self, client: ClientId) {
        let ids: Vec<String> = self
            .sessions()
            .values()
            .filter(|s| s.owner == client)
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            self.stop_session_internal(&id, None).await;
        }
    }

    pub async fn stop_all(&self) {
        let ids: Vec<String> = self.sessions().keys().cloned().collect();
        for id in ids {
            self.stop_session_internal(&id, None).await;
        }
    }

    pub fn list_sessions(&self) -> ListSessionsResult {
        let mut sessions: Vec<SessionInfo> = self
            .sessions()
            .values()
            .map(|s| SessionInfo {
                session_id: s.id.clone(),
                target: s.target.clone(),
                state: s.state(),
                ports: s.shared.incoming.ports(),
                processes: s.shared.processes(),
                started_at: s.started_at,
                agent_pid: s.agent_pid,
                browser: s.browser.clone(),
            })
            .collect();
        sessions.sort_by_key(|s| s.started_at);
        ListSessionsResult { sessions }
    }

    pub fn traffic_history(
        &self,
        params: TrafficHistoryParams,
    ) -> Result<TrafficHistoryResult, ApiError> {
        let s = self.session(&params.session_id)?;
        Ok(TrafficHistoryResult {
            events: s.shared.traffic.history(params.limit),
        })
    }

    fn start_watcher(self: Arc<Self>) {
        use notify::Watcher;
        let weak = Arc::downgrade(&self);
        let handle = tokio::runtime::Handle::current();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            let Some(daemon) = weak.upgrade() else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            for path in event.paths {
                let daemon = daemon.clone();
                handle.spawn(async move { daemon.config_changed(&path) });
            }
        });
        match watcher {
            Ok(mut w) => {
                // Nothing to watch yet; files are added as sessions start.
                let _ = w.configure(notify::Config::default());
                *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
            }
            Err(e) => tracing::warn!("config files will not be watched: {e}"),
        }
    }

    fn watch(&self, path: &Path) {
        use notify::Watcher;
        // Watch the directory: editors replace files on save (rename), which a file watch misses.
        let dir = path.parent().unwrap_or(path);
        if let Some(w) = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!("cannot watch {}: {e}", dir.display());
            }
        }
    }

    /// A config file changed on disk: tell the sessions that use it whether it still works.
    fn config_changed(&self, path: &Path) {
        let users: Vec<Arc<ManagedSession>> = self
            .sessions()
            .values()
            .filter(|s| s.config_path.as_deref().is_some_and(|p| same_file(p, path)))
            .cloned()
            .collect();
        if users.is_empty() {
            return;
        }
        let (message, reason) = match config_file::load(path) {
            Ok(_) => (
                format!(
                    "{} changed; the next launch uses the new configuration",
                    path.display()
                ),
                ChangeReason::ConfigChanged,
            ),
            Err(e) => (
                format!("{e}; this session keeps the configuration it started with"),
                ChangeReason::ConfigInvalid,
            ),
        };
        for s in users {
            s.set_state(s.state(), Some(message.clone()), Some(reason));
        }
    }
}

/// `feature.env` for one launch: the launch configuration's own variables are never replaced,
/// and a relative `env_file` is found from the launch's working directory (else the workspace).
fn program_env_for(
    session: &Session,
    params: &StartSessionParams,
) -> Result<crate::remote_env::ProgramEnv, ApiError> {
    let launch = params.launch.as_ref();
    let keeps = |name: &str| launch.is_some_and(|l| l.env.contains_key(name));
    let cwd = launch
        .and_then(|l| l.cwd.clone())
        .or_else(|| params.workspace_folder.clone())
        .map(PathBuf::from);
    Ok(session.program_env(&keeps, cwd.as_deref())?)
}

/// Adds `feature.env`'s variables under the session's own (which win) and returns the names the
/// IDE must remove: the fixed ones, and `unset` (with the spelling the launch uses, since the
/// match is case-insensitive).
fn merge_program_env(
    env: &mut BTreeMap<String, String>,
    program_env: crate::remote_env::ProgramEnv,
    params: &StartSessionParams,
) -> Vec<String> {
    for (name, value) in program_env.set {
        env.entry(name).or_insert(value);
    }
    let mut unset: Vec<String> = ENV_TO_UNSET.iter().map(|s| s.to_string()).collect();
    let launch_names = params.launch.iter().flat_map(|l| l.env.keys());
    for name in program_env.unset.iter().chain(launch_names) {
        let wanted = program_env
            .unset
            .iter()
            .any(|u| u.eq_ignore_ascii_case(name));
        if wanted && !unset.contains(name) && !env.contains_key(name) {
            unset.push(name.clone());
        }
    }
    unset
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || (std::fs::canonicalize(a).ok().is_some()
            && std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok())
}

/// Config resolution order: explicit path, `MIRRORD_CONFIG_FILE` of the launch, the first
/// `*mirrord.{json,toml,yaml}` in `<workspace>/.mirrord/`, none (defaults).
pub fn resolve_config_path(params: &StartSessionParams) -> Option<PathBuf> {
    let relative_to_workspace = |p: &str| {
        let p = PathBuf::from(p);
        match (&params.workspace_folder, p.is_relative()) {
            (Some(ws), true) => PathBuf::from(ws).join(p),
            _ => p,
        }
    };
    if let Some(p) = &params.config_path {
        return Some(relative_to_workspace(p));
    }
    if let Some(p) = params
        .launch
        .as_ref()
        .and_then(|l| l.env.get("MIRRORD_CONFIG_FILE"))
    {
        return Some(relative_to_workspace(p));
    }
    let dir = PathBuf::from(params.workspace_folder.as_ref()?).join(".mirrord");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                ["mirrord.json", "mirrord.toml", "mirrord.yaml"]
                    .iter()
                    .any(|s| n.ends_with(s))
            })
        })
        .collect();
    found.sort();
    found.into_iter().next()
}
