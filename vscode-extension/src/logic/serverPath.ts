// Where mirrord-server is: the `mirrord.serverPath` setting, else PATH, else the extension's bin/.

import * as path from 'path';

export const SERVER_BINARY = 'mirrord-server';

export interface ServerLocation {
  path: string;
  source: 'setting' | 'path' | 'bundled';
}

export interface Lookup {
  setting?: string;
  pathEnv?: string;
  extensionPath: string;
  home?: string;
  platform?: NodeJS.Platform;
  isExecutable: (p: string) => boolean;
}

function expandHome(p: string, home: string | undefined): string {
  if (home && (p === '~' || p.startsWith('~/'))) {
    return path.join(home, p.slice(1));
  }
  return p;
}

/**
 * The server binary to start, or undefined if there is none. A setting that names a missing
 * file is still returned (starting it fails with a message naming that path), because the user
 * asked for exactly that binary.
 */
export function resolveServerPath(l: Lookup): ServerLocation | undefined {
  const exe = (l.platform ?? process.platform) === 'win32' ? `${SERVER_BINARY}.exe` : SERVER_BINARY;
  const setting = l.setting?.trim();
  if (setting) {
    return { path: expandHome(setting, l.home), source: 'setting' };
  }
  const sep = (l.platform ?? process.platform) === 'win32' ? ';' : ':';
  for (const dir of (l.pathEnv ?? '').split(sep)) {
    if (!dir) {
      continue;
    }
    const candidate = path.join(dir, exe);
    if (l.isExecutable(candidate)) {
      return { path: candidate, source: 'path' };
    }
  }
  const bundled = path.join(l.extensionPath, 'bin', exe);
  if (l.isExecutable(bundled)) {
    return { path: bundled, source: 'bundled' };
  }
  return undefined;
}

/** Whether the user's extra arguments choose the log file themselves. */
export function hasLogFileArg(extra: readonly string[] | undefined): boolean {
  return (extra ?? []).some((a) => a === '--log-file' || a.startsWith('--log-file='));
}

/**
 * mirrord-server's arguments: stdio transport, log level, the log file the extension shows in
 * its output channel (unless the user's extra arguments name one), then the extra arguments.
 */
export function serverArgs(logLevel: string | undefined, extra: readonly string[] | undefined, logFile?: string): string[] {
  const args = ['--stdio'];
  if (logLevel && logLevel.trim()) {
    args.push('--log-level', logLevel.trim());
  }
  if (logFile && !hasLogFileArg(extra)) {
    args.push('--log-file', logFile);
  }
  args.push(...(extra ?? []));
  return args;
}
