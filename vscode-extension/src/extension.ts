// The mirrord extension: the status bar toggle, "Run with mirrord", the debug configuration
// provider for every debugger, the target picker, the traffic panel and the sessions view, all
// on top of mirrord-server --stdio.

import * as vscode from 'vscode';
import {
  ListSessionsResult,
  ListTargetsResult,
  METHODS,
  SessionInfo,
  StartSessionParams,
  StartSessionResult,
  TrafficHistoryResult,
} from './logic/api';
import { SessionConnections, statusLook } from './logic/connection';
import { defaultConfigPath, defaultConfigText } from './logic/config';
import { applySession, decide, LaunchConfig, startSessionParams } from './logic/launch';
import { isNoTargetError, namespaceItems, pickerItems, rememberTarget, SWITCH_NAMESPACE } from './logic/targets';
import { TrafficStore } from './logic/traffic';
import { messageOf, MirrordServer } from './server';
import { debugFromBrowser } from './browserCommand';
import { sessionIdOf, SessionsView } from './sessionsView';
import { TrafficView } from './trafficView';

const ENABLED_KEY = 'mirrord.enabled';
const RECENT_TARGETS_KEY = 'mirrord.recentTargets';
const NAMESPACE_KEY = 'mirrord.namespace';

let server: MirrordServer | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const output = vscode.window.createOutputChannel('mirrord');
  context.subscriptions.push(output);
  output.appendLine(`[mirrord] extension ${context.extension.packageJSON.version} activating`);

  server = new MirrordServer(context, output);
  const srv = server;
  context.subscriptions.push(srv);

  // ---- state: on/off per workspace, recent targets ----
  const isEnabled = () => context.workspaceState.get<boolean>(ENABLED_KEY, false);
  const status = vscode.window.createStatusBarItem('mirrord.status', vscode.StatusBarAlignment.Left, 100);
  status.name = 'mirrord';
  status.command = 'mirrord.toggle';
  context.subscriptions.push(status);
  const connections = new SessionConnections();
  const drawStatus = () => {
    const on = isEnabled();
    const look = statusLook(on, connections.count());
    status.text = look.text;
    status.tooltip = look.tooltip;
    const label = connections.count() > 0 ? 'mirrord: reconnecting' : on ? 'mirrord: on' : 'mirrord: off';
    status.accessibilityInformation = { label, role: 'button' };
    status.backgroundColor = look.warning ? new vscode.ThemeColor('statusBarItem.warningBackground') : undefined;
    void vscode.commands.executeCommand('setContext', 'mirrord.enabled', on);
    status.show();
  };
  const setEnabled = async (on: boolean) => {
    await context.workspaceState.update(ENABLED_KEY, on);
    output.appendLine(`[mirrord] mirrord is ${on ? 'on' : 'off'} for this workspace`);
    drawStatus();
  };
  drawStatus();

  // ---- views ----
  const store = new TrafficStore(vscode.workspace.getConfiguration('mirrord').get<number>('trafficRowLimit', 2000));
  const traffic = new TrafficView(context.extensionUri, store);
  const sessionsView = new SessionsView();
  context.subscriptions.push(
    traffic,
    sessionsView,
    vscode.window.registerWebviewViewProvider(TrafficView.viewId, traffic, {
      webviewOptions: { retainContextWhenHidden: true },
    }),
    vscode.window.createTreeView(SessionsView.viewId, { treeDataProvider: sessionsView, showCollapseAll: false }),
  );

  let refreshTimer: NodeJS.Timeout | undefined;
  const refreshSessions = async () => {
    if (!srv.isRunning()) {
      sessionsView.set([]);
      traffic.setSessions([]);
      return;
    }
    try {
      const res = await srv.request<ListSessionsResult>(METHODS.listSessions, {});
      sessionsView.set(res.sessions);
      traffic.setSessions(res.sessions);
    } catch (e) {
      output.appendLine(`[mirrord] listSessions failed: ${messageOf(e)}`);
    }
  };
  const refreshSoon = () => {
    if (refreshTimer) {
      clearTimeout(refreshTimer);
    }
    refreshTimer = setTimeout(() => void refreshSessions(), 200);
  };
  context.subscriptions.push({ dispose: () => refreshTimer && clearTimeout(refreshTimer) });

  context.subscriptions.push(
    srv.onTraffic((n) => {
      traffic.add(n.sessionId, n.event);
      if (['process_connected', 'process_disconnected', 'port_subscription', 'error'].includes(n.event.type)) {
        refreshSoon();
      }
    }),
    srv.onSessionChanged((n) => {
      output.appendLine(`[mirrord] session ${n.sessionId}: ${n.state}${n.message ? ` — ${n.message}` : ''}`);
      if (connections.update(n.sessionId, n.state)) {
        drawStatus();
      }
      if (n.state === 'error') {
        void vscode.window.showErrorMessage(`mirrord: ${n.message ?? `session ${n.sessionId} failed`}`, 'Show Log').then((c) => {
          if (c) {
            output.show(true);
          }
        });
      } else if (n.message && n.reason === 'config_invalid') {
        void vscode.window.showWarningMessage(`mirrord: ${n.message}`);
      } else if (n.message && (n.reason === 'config_changed' || n.reason === 'reconnected')) {
        vscode.window.setStatusBarMessage(`mirrord: ${n.message}`, 8000);
      }
      refreshSoon();
    }),
    srv.onReady(() => refreshSoon()),
  );

  // ---- target picker ----
  interface Picked {
    target: string;
    /** The namespace the target was listed in, when the user switched to one. */
    namespace?: string;
  }
  const pickTarget = async (workspaceFolder: string | undefined): Promise<Picked | undefined> => {
    let namespace = context.workspaceState.get<string>(NAMESPACE_KEY);
    // Switching the namespace lists that namespace's targets and asks again.
    for (;;) {
      let res: ListTargetsResult;
      try {
        res = await srv.request<ListTargetsResult>(METHODS.listTargets, { workspaceFolder, namespace });
      } catch (e) {
        void vscode.window.showErrorMessage(`mirrord: could not list targets: ${messageOf(e)}`);
        return undefined;
      }
      const recent = context.workspaceState.get<string[]>(RECENT_TARGETS_KEY, []);
      const items = pickerItems(res, recent, namespace);
      if (!items.length) {
        void vscode.window.showErrorMessage('mirrord: no target found; set "target" in .mirrord/mirrord.json.');
        return undefined;
      }
      const pick = await vscode.window.showQuickPick(items, {
        title: `mirrord: choose the target${namespace ? ` (namespace ${namespace})` : ''}`,
        placeHolder: 'The launch gets this target\'s network (set "target" in .mirrord/mirrord.json to skip this)',
        matchOnDescription: true,
        ignoreFocusOut: true,
      });
      if (!pick) {
        return undefined;
      }
      if (pick.target === SWITCH_NAMESPACE) {
        const ns = await vscode.window.showQuickPick(namespaceItems(res.namespaces ?? [], namespace), {
          title: 'mirrord: choose the namespace',
          ignoreFocusOut: true,
        });
        if (ns) {
          namespace = ns.namespace;
          await context.workspaceState.update(NAMESPACE_KEY, namespace);
        }
        continue;
      }
      await context.workspaceState.update(RECENT_TARGETS_KEY, rememberTarget(recent, pick.target));
      return { target: pick.target, namespace: res.namespaces ? namespace : undefined };
    }
  };

  // ---- sessions ----
  const startSession = (params: StartSessionParams, token?: vscode.CancellationToken) =>
    vscode.window.withProgress(
      {
        location: vscode.ProgressLocation.Notification,
        title: `mirrord: starting the session${params.target ? ` on ${params.target}` : ''}…`,
        cancellable: false,
      },
      () => srv.request<StartSessionResult>(METHODS.startSession, params, token),
    );

  const startForLaunch = async (
    folder: vscode.WorkspaceFolder | undefined,
    config: LaunchConfig,
    token?: vscode.CancellationToken,
  ): Promise<StartSessionResult | undefined> => {
    const folderPath = (folder ?? vscode.workspace.workspaceFolders?.[0])?.uri.fsPath;
    const params = startSessionParams(folderPath, config);
    try {
      return await startSession(params, token);
    } catch (e) {
      if (!isNoTargetError(e)) {
        throw e;
      }
      output.appendLine(`[mirrord] ${messageOf(e)}`);
      const picked = await pickTarget(folderPath);
      if (!picked) {
        return undefined;
      }
      return await startSession({ ...params, target: picked.target, namespace: picked.namespace }, token);
    }
  };

  const provider: vscode.DebugConfigurationProvider = {
    async resolveDebugConfigurationWithSubstitutedVariables(folder, debugConfiguration, token) {
      const config = debugConfiguration as LaunchConfig;
      const decision = decide(config, isEnabled());
      output.appendLine(
        `[mirrord] launch "${config.name ?? config.type}" (${config.type}/${config.request}): mirrord ${decision.active ? 'on' : 'off'} (${decision.reason})`,
      );
      if (!decision.active) {
        return debugConfiguration;
      }
      let result: StartSessionResult | undefined;
      try {
        result = await startForLaunch(folder, config, token);
      } catch (e) {
        const msg = messageOf(e);
        output.appendLine(`[mirrord] startSession failed: ${msg}`);
        void vscode.window.showErrorMessage(`mirrord: ${msg}`, 'Show Log', 'Open Configuration').then((c) => {
          if (c === 'Show Log') {
            output.show(true);
          } else if (c === 'Open Configuration') {
            void vscode.commands.executeCommand('mirrord.openConfig');
          }
        });
        return undefined; // abort the launch
      }
      if (!result) {
        output.appendLine('[mirrord] no target chosen; the launch is cancelled');
        return undefined;
      }
      output.appendLine(`[mirrord] session ${result.sessionId} for "${config.name ?? config.type}"`);
      const resolved = applySession(config, result, { inherited: process.env });
      refreshSoon();
      const sessionId = result.sessionId;
      void srv
        .request<TrafficHistoryResult>(METHODS.trafficHistory, { sessionId, limit: 500 })
        .then((h) => traffic.addHistory(sessionId, h.events))
        .catch(() => undefined);
      return resolved as vscode.DebugConfiguration;
    },
  };
  context.subscriptions.push(vscode.debug.registerDebugConfigurationProvider('*', provider));

  // ---- configuration file ----
  const pickFolder = async (): Promise<vscode.WorkspaceFolder | undefined> => {
    const folders = vscode.workspace.workspaceFolders ?? [];
    if (folders.length <= 1) {
      return folders[0];
    }
    return vscode.window.showWorkspaceFolderPick({ placeHolder: 'Workspace folder for .mirrord/mirrord.json' });
  };
  const openConfig = async (createOnly: boolean) => {
    const folder = await pickFolder();
    if (!folder) {
      void vscode.window.showErrorMessage('mirrord: open a folder first.');
      return;
    }
    const uri = vscode.Uri.file(defaultConfigPath(folder.uri.fsPath));
    let exists = true;
    try {
      await vscode.workspace.fs.stat(uri);
    } catch {
      exists = false;
    }
    if (!exists) {
      await vscode.workspace.fs.createDirectory(vscode.Uri.joinPath(uri, '..'));
      await vscode.workspace.fs.writeFile(uri, Buffer.from(defaultConfigText(), 'utf8'));
      output.appendLine(`[mirrord] created ${uri.fsPath}`);
    } else if (createOnly) {
      void vscode.window.showInformationMessage(`mirrord: ${vscode.workspace.asRelativePath(uri)} already exists.`);
    }
    await vscode.window.showTextDocument(uri);
  };

  // ---- commands ----
  const reg = (id: string, fn: (...args: any[]) => unknown) =>
    context.subscriptions.push(vscode.commands.registerCommand(id, fn));
  reg('mirrord.toggle', () => setEnabled(!isEnabled()));
  reg('mirrord.enable', () => setEnabled(true));
  reg('mirrord.disable', () => setEnabled(false));
  reg('mirrord.runWithMirrord', async () => {
    await setEnabled(true);
    // Starts the launch configuration selected in Run and Debug (or asks for one).
    await vscode.commands.executeCommand('workbench.action.debug.start');
  });
  reg('mirrord.selectTarget', async () => {
    const target = (await pickTarget(vscode.workspace.workspaceFolders?.[0]?.uri.fsPath))?.target;
    if (target) {
      void vscode.window.showInformationMessage(
        `mirrord: ${target} is now the most recent target (set "target": "${target}" in .mirrord/mirrord.json to always use it).`,
      );
    }
  });
  reg('mirrord.openConfig', () => openConfig(false));
  reg('mirrord.createConfig', () => openConfig(true));
  reg('mirrord.showTraffic', () => vscode.commands.executeCommand(`${TrafficView.viewId}.focus`));
  reg('mirrord.clearTraffic', () => traffic.clear());
  reg('mirrord.refreshSessions', () => refreshSessions());
  reg('mirrord.showOutput', () => output.show(true));
  reg('mirrord.debugFromBrowser', () => debugFromBrowser(srv, output));
  reg('mirrord.stopSession', async (arg?: unknown) => {
    let id = sessionIdOf(arg);
    if (!id) {
      const sessions = sessionsView.get();
      const pick = await vscode.window.showQuickPick(
        sessions.map((s: SessionInfo) => ({ label: s.target, description: `${s.state} · ${s.sessionId}`, id: s.sessionId })),
        { placeHolder: 'Stop which mirrord session?' },
      );
      id = pick?.id;
    }
    if (!id) {
      return;
    }
    try {
      await srv.request(METHODS.stopSession, { sessionId: id });
      output.appendLine(`[mirrord] stopped session ${id}`);
    } catch (e) {
      void vscode.window.showErrorMessage(`mirrord: ${messageOf(e)}`);
    }
    await refreshSessions();
  });
  reg('mirrord.restartServer', async () => {
    try {
      await srv.restart();
      void vscode.window.showInformationMessage('mirrord: mirrord-server restarted.');
    } catch (e) {
      void vscode.window.showErrorMessage(`mirrord: ${messageOf(e)}`);
    }
    await refreshSessions();
  });

  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration('mirrord.trafficRowLimit')) {
        store.setLimit(vscode.workspace.getConfiguration('mirrord').get<number>('trafficRowLimit', 2000));
      }
      if (
        e.affectsConfiguration('mirrord.serverPath') ||
        e.affectsConfiguration('mirrord.serverArgs') ||
        e.affectsConfiguration('mirrord.logLevel')
      ) {
        void vscode.window
          .showInformationMessage('mirrord: restart mirrord-server to use the new settings? Running sessions end.', 'Restart')
          .then((c) => c && vscode.commands.executeCommand('mirrord.restartServer'));
      }
    }),
  );

  // Start the daemon now, so configuration files get diagnostics as soon as they are opened.
  srv.ensureStarted().catch((e) => {
    output.appendLine(`[mirrord] ${messageOf(e)}`);
    void vscode.window.showErrorMessage(`mirrord: ${messageOf(e)}`, 'Open Settings', 'Show Log').then((c) => {
      if (c === 'Open Settings') {
        void vscode.commands.executeCommand('workbench.action.openSettings', 'mirrord.serverPath');
      } else if (c === 'Show Log') {
        output.show(true);
      }
    });
  });
}

export async function deactivate(): Promise<void> {
  await server?.stop();
}
