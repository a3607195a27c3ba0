//! The JSON-RPC API of `mirrord-server` (IDE plugins ↔ daemon): parameters, results and
//! notifications of the `mirrord/*` methods, in the JSON shape the design brief fixes
//! (camelCase fields; `TrafficEvent` tagged by `type`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTargetsParams {
    pub workspace_folder: Option<String>,
    pub config_path: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetInfo {
    pub path: String,
    pub available: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTargetsResult {
    pub targets: Vec<TargetInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyConfigParams {
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDiagnostic {
    pub message: String,
    /// 1-based, as in editors' status bars; 0 if the problem has no position.
    pub line: u32,
    pub column: u32,
    /// "error" | "warning"
    pub severity: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyConfigResult {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub diagnostics: Vec<ConfigDiagnostic>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchInfo {
    pub program: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    pub cwd: Option<String>,
    pub debugger_type: Option<String>,
    /// The launch configuration's own environment (for `MIRRORD_CONFIG_FILE`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartSessionParams {
    pub workspace_folder: Option<String>,
    pub config_path: Option<String>,
    pub target: Option<String>,
    /// Kubernetes namespace of the target (the IDE's namespace switch); beats the
    /// configuration's `target.namespace`. An extension of the brief's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub launch: Option<LaunchInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartSessionResult {
    pub session_id: String,
    pub env: BTreeMap<String, String>,
    pub env_to_unset: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionIdParams {
    pub session_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub session_id: String,
    pub target: String,
    pub state: SessionState,
    /// Pod ports the session's processes receive traffic of.
    pub ports: Vec<u16>,
    /// Processes currently in the session.
    pub processes: Vec<ProcessInfo>,
    /// Unix time in milliseconds.
    pub started_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_pid: Option<u32>,
    /// Set when the session steals with a header filter: what the browser extension needs to
    /// send matching requests ("mirrord: Debug from browser").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<BrowserSetup>,
}

/// How to set up the browser extension for a session whose steal has a `header_filter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrowserSetup {
    /// The extension's options page with the session's header in its fragment.
    pub link: String,
    /// The `header_filter` as configured.
    pub filter: String,
    /// The header name and value that match the filter, when it names a single one; absent for
    /// a filter that is a pattern (the user then types a value that matches it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    pub pid: u32,
    pub executable: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListSessionsResult {
    pub sessions: Vec<SessionInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficHistoryParams {
    pub session_id: String,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficHistoryResult {
    pub events: Vec<TrafficEvent>,
}

/// `mirrord/traffic` notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficNotification {
    pub session_id: String,
    pub event: TrafficEvent,
}

/// `mirrord/sessionChanged` notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionChanged {
    pub session_id: String,
    pub state: SessionState,
    /// For people; `reason` is what a plugin matches on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ChangeReason>,
}

/// Where a session is in its life (`listSessions`, `sessionChanged`). On the wire:
/// `"starting" | "ready" | "reconnecting" | "error" | "stopped"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Starting,
    Ready,
    /// The connection to the agent dropped: the session keeps its programs running and
    /// reconnects; `ready` (reason `reconnected`) follows, or `error` when the agent is gone.
    Reconnecting,
    /// Failed (its agent died); it stops next.
    Error,
    Stopped,
}

/// Why a `sessionChanged` notification was sent, when it is not just a new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeReason {
    /// The session's configuration file changed and still works: the next launch uses it.
    ConfigChanged,
    /// The session's configuration file changed and is broken now: the session keeps the
    /// configuration it started with.
    ConfigInvalid,
    /// The session's agent exited.
    AgentExited,
    /// The connection to the agent dropped (state `reconnecting`).
    ConnectionLost,
    /// The session reached its agent again and resumed (state `ready`).
    Reconnected,
}

/// What kind of failure a `mirrord/*` method reports, in the JSON-RPC error's `data` as
/// `{"kind": "..."}`. Plugins match on this, never on the message (which is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// `startSession` without a target (none given, none in the configuration): ask for one.
    NoTarget,
    /// A target that does not parse, or that this build cannot reach.
    BadTarget,
    /// The configuration file is missing, unreadable or invalid.
    Config,
    /// The session could not start (the agent failed or did not become ready).
    SessionStart,
    /// No session with that id.
    NoSession,
    /// The Kubernetes cluster could not be reached, or refused a request (the message says
    /// which, and what to do).
    Cluster,
    /// Anything else.
    Internal,
}

/// The `data` of a `mirrord/*` method's JSON-RPC error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorData {
    pub kind: ErrorKind,
}

/// Something that happened in a session, for the live traffic view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrafficEvent {
    IncomingConnection {
        /// Unix time in milliseconds.
        time: u64,
        peer: String,
        port: u16,
        /// "mirror" | "steal"
        mode: String,
    },
    IncomingRequest {
        time: u64,
        port: u16,
        method: String,
        path: String,
        headers: BTreeMap<String, String>,
        /// The response status (0 if the request failed).
        status: u16,
        duration_ms: u64,
        /// "mirror" | "steal"
        mode: String,
        /// The filter that took the request (steal), if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        matched_filter: Option<String>,
    },
    OutgoingConnection {
        time: u64,
        /// The name the program looked up, if it came from a lookup.
        #[serde(skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        address: String,
        port: u16,
        /// "tcp" | "udp"
        protocol: String,
        /// null on success, else why it failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    DnsQuery {
        time: u64,
        name: String,
        answers: Vec<String>,
        duration_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    PortSubscription {
        time: u64,
        port: u16,
        mode: String,
        /// false when the port was released.
        active: bool,
    },
    ProcessConnected {
        time: u64,
        pid: u32,
        executable: String,
    },
    ProcessDisconnected {
        time: u64,
        pid: u32,
        executable: String,
    },
    Error {
        time: u64,
        message: String,
    },
}

/// Unix time in milliseconds, for event timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
