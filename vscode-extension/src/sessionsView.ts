// The "mirrord Sessions" tree: running sessions (mirrord/listSessions) with a stop button each,
// and their processes and ports as children.

import * as vscode from 'vscode';
import { SessionInfo } from './logic/api';
import { shortSession } from './logic/traffic';

type Node = { kind: 'session'; session: SessionInfo } | { kind: 'detail'; label: string; description?: string; icon: string };

export class SessionsView implements vscode.TreeDataProvider<Node> {
  static readonly viewId = 'mirrord.sessions';
  private sessions: SessionInfo[] = [];
  private readonly changed = new vscode.EventEmitter<Node | undefined>();
  readonly onDidChangeTreeData = this.changed.event;

  set(sessions: SessionInfo[]): void {
    this.sessions = sessions;
    this.changed.fire(undefined);
  }

  get(): SessionInfo[] {
    return this.sessions;
  }

  getTreeItem(node: Node): vscode.TreeItem {
    if (node.kind === 'session') {
      const s = node.session;
      const item = new vscode.TreeItem(s.target, vscode.TreeItemCollapsibleState.Expanded);
      item.id = s.sessionId;
      item.description = `${s.state} · ${shortSession(s.sessionId)}`;
      item.contextValue = 'mirrordSession';
      item.iconPath = new vscode.ThemeIcon(
        s.state === 'ready' ? 'pass-filled' : s.state === 'error' ? 'error' : 'loading~spin',
      );
      item.tooltip = new vscode.MarkdownString(
        [
          `**${s.target}** — ${s.state}`,
          `session \`${s.sessionId}\``,
          s.agentPid ? `agent pid ${s.agentPid}` : '',
          `started ${new Date(s.startedAt).toLocaleString()}`,
        ]
          .filter(Boolean)
          .join('\n\n'),
      );
      return item;
    }
    const item = new vscode.TreeItem(node.label, vscode.TreeItemCollapsibleState.None);
    item.description = node.description;
    item.iconPath = new vscode.ThemeIcon(node.icon);
    return item;
  }

  getChildren(node?: Node): Node[] {
    if (!node) {
      return this.sessions.map((session) => ({ kind: 'session', session }));
    }
    if (node.kind !== 'session') {
      return [];
    }
    const s = node.session;
    const children: Node[] = [];
    if (s.ports.length) {
      children.push({ kind: 'detail', label: `ports ${s.ports.join(', ')}`, icon: 'plug' });
    }
    for (const p of s.processes) {
      children.push({ kind: 'detail', label: p.executable, description: `pid ${p.pid}`, icon: 'terminal' });
    }
    if (!children.length) {
      children.push({ kind: 'detail', label: 'no process yet', icon: 'circle-outline' });
    }
    return children;
  }

  dispose(): void {
    this.changed.dispose();
  }
}

/** The session a stop command was given: a tree node, a session id, or nothing. */
export function sessionIdOf(arg: unknown): string | undefined {
  if (typeof arg === 'string') {
    return arg;
  }
  if (arg && typeof arg === 'object') {
    const a = arg as { session?: { sessionId?: string }; sessionId?: string };
    return a.session?.sessionId ?? a.sessionId;
  }
  return undefined;
}
