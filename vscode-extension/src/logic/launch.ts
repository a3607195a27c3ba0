// What the debug configuration provider does to a launch configuration, without VS Code:
// whether mirrord applies (MIRRORD_ACTIVE, attach), the startSession parameters, and merging the
// session's environment into the launch configuration.

import type { StartSessionParams, StartSessionResult } from './api';

/** The parts of a debug configuration this module reads (any debugger type). */
export interface LaunchConfig {
  type?: string;
  request?: string;
  name?: string;
  env?: Record<string, unknown> | null;
  [key: string]: unknown;
}

export type Reason =
  | 'attach' // request: "attach": nothing is launched, so there is nothing to inject into
  | 'forced-on' // MIRRORD_ACTIVE=1 in the launch configuration's env
  | 'forced-off' // MIRRORD_ACTIVE=0
  | 'enabled' // the workspace toggle is on
  | 'disabled' // the workspace toggle is off
  | 'already' // the configuration already carries a session (resolved twice)
  | 'child'; // a debugger's own child session (js-debug's per-process sessions)

export interface Decision {
  active: boolean;
  reason: Reason;
}

const TRUE_VALUES = new Set(['1', 'true', 'yes', 'on']);
const FALSE_VALUES = new Set(['0', 'false', 'no', 'off']);

/** `MIRRORD_ACTIVE` of a launch configuration's env: true, false, or undefined (not set). */
export function mirrordActiveOverride(env: LaunchConfig['env']): boolean | undefined {
  if (!env || typeof env !== 'object') {
    return undefined;
  }
  const raw = env['MIRRORD_ACTIVE'];
  if (raw === undefined || raw === null) {
    return undefined;
  }
  const value = String(raw).trim().toLowerCase();
  if (TRUE_VALUES.has(value)) {
    return true;
  }
  if (FALSE_VALUES.has(value)) {
    return false;
  }
  return undefined;
}

/**
 * Whether mirrord runs for this launch. Attach configurations are never touched; otherwise
 * `MIRRORD_ACTIVE` in the configuration's env wins (1 on, 0 off), else the workspace toggle.
 */
export function decide(config: LaunchConfig, toggleOn: boolean): Decision {
  if (config.request === 'attach') {
    return { active: false, reason: 'attach' };
  }
  if (config['__pendingTargetId'] !== undefined || config['__parentId'] !== undefined) {
    // js-debug starts one child session per process it attaches to; the process was launched
    // by the parent session, which already has mirrord's environment.
    return { active: false, reason: 'child' };
  }
  const env = config.env && typeof config.env === 'object' ? config.env : undefined;
  if (env && typeof env['MIRRORD_SESSION'] === 'string' && env['MIRRORD_SESSION'] !== '') {
    return { active: false, reason: 'already' };
  }
  const forced = mirrordActiveOverride(env);
  if (forced === true) {
    return { active: true, reason: 'forced-on' };
  }
  if (forced === false) {
    return { active: false, reason: 'forced-off' };
  }
  return toggleOn ? { active: true, reason: 'enabled' } : { active: false, reason: 'disabled' };
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

/** Launch arguments as a list: debuggers accept an array, and some a single string. */
export function launchArgs(args: unknown): string[] {
  if (Array.isArray(args)) {
    return args.filter((a) => a !== null && a !== undefined).map((a) => String(a));
  }
  if (typeof args === 'string' && args.trim() !== '') {
    return args.trim().split(/\s+/);
  }
  return [];
}

/** The string-valued entries of a launch configuration's env (null/objects are dropped). */
export function stringEnv(env: LaunchConfig['env']): Record<string, string> {
  const out: Record<string, string> = {};
  if (!env || typeof env !== 'object') {
    return out;
  }
  for (const [k, v] of Object.entries(env)) {
    if (typeof v === 'string') {
      out[k] = v;
    } else if (typeof v === 'number' || typeof v === 'boolean') {
      out[k] = String(v);
    }
  }
  return out;
}

/** The program a configuration launches, whatever the debugger calls it. */
export function launchProgram(config: LaunchConfig): string | undefined {
  return (
    str(config['program']) ??
    str(config['module']) ??
    str(config['runtimeExecutable']) ??
    str(config['command']) ??
    str(config['mainClass'])
  );
}

/** `mirrord/startSession` parameters for a launch configuration. */
export function startSessionParams(
  workspaceFolder: string | undefined,
  config: LaunchConfig,
  target?: string,
): StartSessionParams {
  const params: StartSessionParams = {
    launch: {
      program: launchProgram(config),
      args: launchArgs(config['args']),
      cwd: str(config['cwd']) ?? workspaceFolder,
      debuggerType: str(config.type),
      env: stringEnv(config.env),
    },
  };
  if (workspaceFolder !== undefined) {
    params.workspaceFolder = workspaceFolder;
  }
  if (target !== undefined) {
    params.target = target;
  }
  return params;
}

/** Splits an LD_PRELOAD value (entries are separated by colons or spaces). */
export function preloadEntries(value: string | undefined): string[] {
  return (value ?? '').split(/[:\s]+/).filter((e) => e !== '');
}

/**
 * LD_PRELOAD for the launch: the session's value, keeping every entry of the launch
 * configuration's own LD_PRELOAD (the daemon appends the layer to it already; this only
 * matters when it did not, e.g. a reused session that was started by a different launch).
 */
export function mergePreload(launchValue: string | undefined, sessionValue: string): string {
  const session = preloadEntries(sessionValue);
  const missing = preloadEntries(launchValue).filter((e) => !session.includes(e));
  return [...missing, ...session].join(':');
}

/** Debugger types whose `env` removes a variable given `null` (js-debug). */
export const NULL_UNSETS_TYPES = new Set(['node', 'pwa-node', 'node-terminal', 'pwa-chrome', 'pwa-msedge']);

export interface ApplyOptions {
  /** The environment the debuggee would inherit (the extension host's). */
  inherited?: Record<string, string | undefined>;
}

/**
 * The launch configuration with the session's environment: the session's variables override the
 * configuration's (LD_PRELOAD is merged, see {@link mergePreload}), and `envToUnset` is removed.
 * A variable to unset that the debuggee would inherit is set to `null` for debuggers that read
 * that as "remove". Returns a new object; the input is not modified.
 */
export function applySession(
  config: LaunchConfig,
  result: StartSessionResult,
  options: ApplyOptions = {},
): LaunchConfig {
  const original = config.env && typeof config.env === 'object' ? config.env : {};
  const env: Record<string, unknown> = { ...original };
  for (const [k, v] of Object.entries(result.env ?? {})) {
    if (k === 'LD_PRELOAD') {
      const launchPreload = typeof original['LD_PRELOAD'] === 'string' ? (original['LD_PRELOAD'] as string) : undefined;
      env[k] = mergePreload(launchPreload, v);
    } else {
      env[k] = v;
    }
  }
  const nullUnsets = NULL_UNSETS_TYPES.has(config.type ?? '');
  for (const k of result.envToUnset ?? []) {
    delete env[k];
    if (nullUnsets && options.inherited && options.inherited[k] !== undefined) {
      env[k] = null;
    }
  }
  return { ...config, env };
}
