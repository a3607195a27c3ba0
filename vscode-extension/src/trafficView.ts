// The "mirrord Traffic" webview view: live rows from mirrord/traffic, a filter box, a session
// selector, and a click on a row shows its headers.

import * as crypto from 'crypto';
import * as vscode from 'vscode';
import { SessionInfo, TrafficEvent } from './logic/api';
import { COLUMNS, escapeHtml, Row, shortSession, toWire, TrafficStore } from './logic/traffic';

export class TrafficView implements vscode.WebviewViewProvider, vscode.Disposable {
  static readonly viewId = 'mirrord.traffic';
  private view: vscode.WebviewView | undefined;
  private sessions: SessionInfo[] = [];
  private readonly disposables: vscode.Disposable[] = [];

  constructor(
    private readonly extensionUri: vscode.Uri,
    readonly store: TrafficStore,
  ) {}

  resolveWebviewView(view: vscode.WebviewView): void {
    this.view = view;
    view.webview.options = {
      enableScripts: true,
      localResourceRoots: [vscode.Uri.joinPath(this.extensionUri, 'media')],
    };
    view.webview.html = this.html(view.webview);
    this.disposables.push(
      view.webview.onDidReceiveMessage((msg) => {
        if (msg?.type === 'ready') {
          this.postAll();
        } else if (msg?.type === 'clear') {
          this.clear();
        }
      }),
      view.onDidDispose(() => {
        this.view = undefined;
      }),
    );
  }

  /** A live event: stored, and drawn if the view is open. */
  add(sessionId: string, event: TrafficEvent): Row {
    const row = this.store.add(sessionId, event);
    void this.view?.webview.postMessage({ type: 'append', rows: [toWire(row)] });
    return row;
  }

  addHistory(sessionId: string, events: readonly TrafficEvent[]): void {
    if (this.store.addHistory(sessionId, events).length) {
      this.postAll();
    }
  }

  setSessions(sessions: SessionInfo[]): void {
    this.sessions = sessions;
    void this.view?.webview.postMessage({ type: 'sessions', sessions: this.sessionOptions() });
  }

  clear(): void {
    this.store.clear();
    this.postAll();
  }

  private sessionOptions() {
    const known = new Map<string, string>();
    for (const s of this.sessions) {
      known.set(s.sessionId, `${shortSession(s.sessionId)} ${s.target} (${s.state})`);
    }
    for (const r of this.store.all()) {
      if (!known.has(r.sessionId)) {
        known.set(r.sessionId, `${shortSession(r.sessionId)} (ended)`);
      }
    }
    return [...known.entries()].map(([id, label]) => ({ id, label }));
  }

  private postAll(): void {
    void this.view?.webview.postMessage({
      type: 'reset',
      rows: this.store.all().map(toWire),
      sessions: this.sessionOptions(),
    });
  }

  private html(webview: vscode.Webview): string {
    const nonce = crypto.randomBytes(16).toString('base64');
    const media = (f: string) => webview.asWebviewUri(vscode.Uri.joinPath(this.extensionUri, 'media', f));
    const csp = [
      "default-src 'none'",
      `style-src ${webview.cspSource}`,
      `script-src 'nonce-${nonce}'`,
    ].join('; ');
    const head = COLUMNS.map((c) => `<th>${escapeHtml(c)}</th>`).join('');
    return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${media('traffic.css')}">
<title>mirrord Traffic</title>
</head>
<body>
<div class="toolbar">
  <input id="filter" type="search" placeholder="Filter (e.g. GET /api steal)" aria-label="Filter traffic">
  <select id="session" aria-label="Session"><option value="">All sessions</option></select>
  <span id="count" class="count"></span>
  <button id="clear" title="Clear the rows">Clear</button>
</div>
<div class="table-wrap">
<table id="traffic">
  <thead><tr>${head}</tr></thead>
  <tbody id="rows"></tbody>
</table>
<p id="empty" class="empty">No traffic yet. Start debugging with mirrord on; requests to the target, outgoing connections and DNS queries appear here.</p>
</div>
<script nonce="${nonce}" src="${media('traffic.js')}"></script>
</body>
</html>`;
  }

  dispose(): void {
    for (const d of this.disposables) {
      d.dispose();
    }
  }
}
