// The JSON shapes of mirrord-server's JSON-RPC API (protocol/src/api.rs): camelCase fields,
// TrafficEvent tagged by `type` with snake_case fields.

export interface TargetInfo {
  path: string;
  available: boolean;
}

export interface ListTargetsParams {
  workspaceFolder?: string;
  configPath?: string;
  namespace?: string;
}

export interface ListTargetsResult {
  targets: TargetInfo[];
  namespaces?: string[];
}

export interface LaunchInfo {
  program?: string;
  args: string[];
  cwd?: string;
  debuggerType?: string;
  env: Record<string, string>;
}

export interface StartSessionParams {
  workspaceFolder?: string;
  configPath?: string;
  target?: string;
  /** Kubernetes namespace of the target (chosen in the picker); beats the configuration's. */
  namespace?: string;
  launch?: LaunchInfo;
}

export interface StartSessionResult {
  sessionId: string;
  env: Record<string, string>;
  envToUnset: string[];
}

export interface ProcessInfo {
  pid: number;
  executable: string;
}

/** Mirrors `SessionState` in protocol/src/api.rs. */
export type SessionState = 'starting' | 'ready' | 'reconnecting' | 'error' | 'stopped';

/** Mirrors `ChangeReason` in protocol/src/api.rs: why a `sessionChanged` was sent. */
export type ChangeReason =
  | 'config_changed'
  | 'config_invalid'
  | 'agent_exited'
  | 'connection_lost'
  | 'reconnected';

/**
 * Mirrors `ErrorKind` in protocol/src/api.rs: the kind of a `mirrord/*` method's failure, in the
 * JSON-RPC error's `data` (`{kind}`). Match on it, never on the message.
 */
export type ErrorKind = 'no_target' | 'bad_target' | 'config' | 'session_start' | 'no_session' | 'cluster' | 'internal';

/** Mirrors `ErrorData` in protocol/src/api.rs. */
export interface ErrorData {
  kind: ErrorKind;
}

/** A failed request to the daemon: the message for people, the JSON-RPC `data` for code. */
export class RequestFailure extends Error {
  constructor(
    message: string,
    readonly data?: unknown,
  ) {
    super(message);
    this.name = 'RequestFailure';
  }
}

/** Wraps whatever a request rejected with, keeping the JSON-RPC error's `data` (its kind). */
export function requestFailure(e: unknown): RequestFailure {
  const message =
    e instanceof Error
      ? e.message
      : e && typeof e === 'object' && 'message' in e
        ? String((e as { message: unknown }).message)
        : String(e);
  const data = e && typeof e === 'object' && 'data' in e ? (e as { data: unknown }).data : undefined;
  return new RequestFailure(message, data);
}

/** The error kind of a failed request (a JSON-RPC error whose `data` carries one), if any. */
export function errorKindOf(e: unknown): ErrorKind | undefined {
  if (!e || typeof e !== 'object' || !('data' in e)) {
    return undefined;
  }
  const data = (e as { data: unknown }).data;
  if (data && typeof data === 'object' && 'kind' in data && typeof (data as ErrorData).kind === 'string') {
    return (data as ErrorData).kind;
  }
  return undefined;
}

export interface SessionInfo {
  sessionId: string;
  target: string;
  state: SessionState;
  ports: number[];
  processes: ProcessInfo[];
  startedAt: number;
  agentPid?: number;
  /** Set when the session steals with a header_filter ("mirrord: Debug from browser"). */
  browser?: BrowserSetup;
}

/** How to set up the browser extension for a session (protocol/src/api.rs `BrowserSetup`). */
export interface BrowserSetup {
  link: string;
  filter: string;
  header?: string;
  value?: string;
}

export interface ListSessionsResult {
  sessions: SessionInfo[];
}

export interface SessionChanged {
  sessionId: string;
  state: SessionState;
  message?: string;
  reason?: ChangeReason;
}

export type TrafficEvent =
  | { type: 'incoming_connection'; time: number; peer: string; port: number; mode: string }
  | {
      type: 'incoming_request';
      time: number;
      port: number;
      method: string;
      path: string;
      headers: Record<string, string>;
      status: number;
      duration_ms: number;
      mode: string;
      matched_filter?: string;
    }
  | {
      type: 'outgoing_connection';
      time: number;
      host?: string;
      address: string;
      port: number;
      protocol: string;
      error?: string;
    }
  | { type: 'dns_query'; time: number; name: string; answers: string[]; duration_ms: number; error?: string }
  | { type: 'port_subscription'; time: number; port: number; mode: string; active: boolean }
  | { type: 'process_connected'; time: number; pid: number; executable: string }
  | { type: 'process_disconnected'; time: number; pid: number; executable: string }
  | { type: 'error'; time: number; message: string };

export interface TrafficNotification {
  sessionId: string;
  event: TrafficEvent;
}

export interface TrafficHistoryResult {
  events: TrafficEvent[];
}

export const METHODS = {
  listTargets: 'mirrord/listTargets',
  verifyConfig: 'mirrord/verifyConfig',
  startSession: 'mirrord/startSession',
  stopSession: 'mirrord/stopSession',
  listSessions: 'mirrord/listSessions',
  trafficHistory: 'mirrord/trafficHistory',
  traffic: 'mirrord/traffic',
  sessionChanged: 'mirrord/sessionChanged',
} as const;
