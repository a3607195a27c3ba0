// mirrord-server --stdio through vscode-languageclient: config-file diagnostics, completion and
// hover come from the LSP side; the mirrord/* methods are custom requests and notifications.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as vscode from 'vscode';
import {
  CloseAction,
  ErrorAction,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
} from 'vscode-languageclient/node';
import { METHODS, requestFailure, SessionChanged, TrafficNotification } from './logic/api';
import { LogTail } from './logic/logTail';
import { hasLogFileArg, resolveServerPath, serverArgs, ServerLocation } from './logic/serverPath';

/** Restarts allowed within {@link RESTART_WINDOW_MS} before the extension gives up. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 3 * 60 * 1000;

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

export class MirrordServer implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private starting: Promise<LanguageClient> | undefined;
  private restarts: number[] = [];
  private readonly trafficEmitter = new vscode.EventEmitter<TrafficNotification>();
  private readonly sessionEmitter = new vscode.EventEmitter<SessionChanged>();
  /** Fires when a (re)started server is running: sessions of the previous one are gone. */
  private readonly readyEmitter = new vscode.EventEmitter<void>();
  readonly onTraffic = this.trafficEmitter.event;
  readonly onSessionChanged = this.sessionEmitter.event;
  readonly onReady = this.readyEmitter.event;
  location: ServerLocation | undefined;
  private tail: LogTail | undefined;

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly output: vscode.OutputChannel,
  ) {}

  /** The running client, started on first use. */
  async ensureStarted(): Promise<LanguageClient> {
    if (this.client && this.client.state === State.Running) {
      return this.client;
    }
    if (!this.starting) {
      this.starting = this.start().finally(() => {
        this.starting = undefined;
      });
    }
    return this.starting;
  }

  private async start(): Promise<LanguageClient> {
    if (this.client) {
      // A client that stopped for good (too many crashes) or is mid-restart.
      if (this.client.state === State.Starting) {
        await waitForState(this.client, State.Running, 30000);
        return this.client;
      }
      const old = this.client;
      this.client = undefined;
      await old.dispose().catch(() => undefined);
    }
    const cfg = vscode.workspace.getConfiguration('mirrord');
    const location = resolveServerPath({
      setting: cfg.get<string>('serverPath'),
      pathEnv: process.env.PATH,
      extensionPath: this.context.extensionPath,
      home: os.homedir(),
      isExecutable,
    });
    if (!location) {
      this.output.appendLine(
        `[mirrord] no mirrord-server: setting mirrord.serverPath=${JSON.stringify(cfg.get('serverPath'))}, PATH=${process.env.PATH}, bundled ${path.join(this.context.extensionPath, 'bin')}`,
      );
      throw new Error(
        'mirrord-server was not found: set "mirrord.serverPath", put mirrord-server on PATH, or install an extension build that bundles it.',
      );
    }
    this.location = location;
    // The daemon logs to a file (stdout is the protocol): follow it in the output channel.
    const extra = cfg.get<string[]>('serverArgs') ?? [];
    let logFile: string | undefined;
    if (!hasLogFileArg(extra)) {
      fs.mkdirSync(this.context.logUri.fsPath, { recursive: true });
      logFile = path.join(this.context.logUri.fsPath, 'mirrord-server.log');
      this.tail?.stop();
      this.tail = new LogTail(logFile, (line) => this.output.appendLine(`[server] ${line}`));
      this.tail.start();
    }
    const args = serverArgs(cfg.get<string>('logLevel'), extra, logFile);
    this.output.appendLine(`[mirrord] starting ${location.path} ${args.join(' ')} (from ${location.source})`);
    const serverOptions: ServerOptions = {
      // No `transport`: the client would add another --stdio; stdio is the default.
      run: { command: location.path, args, options: { env: { ...process.env } } },
      debug: { command: location.path, args, options: { env: { ...process.env } } },
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: [
        { scheme: 'file', pattern: '**/.mirrord/*.json' },
        { scheme: 'file', pattern: '**/*mirrord.json' },
      ],
      outputChannel: this.output,
      traceOutputChannel: this.output,
      revealOutputChannelOn: 4 /* RevealOutputChannelOn.Never */,
      initializationFailedHandler: (error) => {
        void vscode.window.showErrorMessage(`mirrord: mirrord-server failed to start: ${messageOf(error)}`);
        return false;
      },
      errorHandler: {
        error: (_error, _message, count) =>
          count !== undefined && count <= 3 ? { action: ErrorAction.Continue } : { action: ErrorAction.Shutdown },
        closed: () => this.onClosed(),
      },
    };
    const client = new LanguageClient('mirrord', 'mirrord', serverOptions, clientOptions);
    client.onNotification(METHODS.traffic, (n: TrafficNotification) => this.trafficEmitter.fire(n));
    client.onNotification(METHODS.sessionChanged, (n: SessionChanged) => this.sessionEmitter.fire(n));
    client.onDidChangeState((e) => {
      if (e.newState === State.Running) {
        this.readyEmitter.fire();
      }
    });
    this.client = client;
    try {
      await client.start();
    } catch (e) {
      this.client = undefined;
      await client.dispose().catch(() => undefined);
      throw new Error(`mirrord-server (${location.path}) did not start: ${messageOf(e)}`);
    }
    this.output.appendLine('[mirrord] mirrord-server is running');
    return client;
  }

  private onClosed() {
    const now = Date.now();
    this.restarts = this.restarts.filter((t) => now - t < RESTART_WINDOW_MS);
    this.restarts.push(now);
    this.output.appendLine(`[mirrord] mirrord-server exited unexpectedly (${this.restarts.length} time(s) in 3 minutes)`);
    if (this.restarts.length <= MAX_RESTARTS) {
      void vscode.window.showWarningMessage(
        'mirrord: mirrord-server stopped unexpectedly and was restarted. Its sessions ended; start debugging again to get a new one.',
      );
      return { action: CloseAction.Restart, handled: true };
    }
    void vscode.window
      .showErrorMessage(
        `mirrord: mirrord-server stopped ${this.restarts.length} times in 3 minutes and will not be restarted. See the "mirrord" output.`,
        'Restart',
        'Show Log',
      )
      .then((choice) => {
        if (choice === 'Restart') {
          void vscode.commands.executeCommand('mirrord.restartServer');
        } else if (choice === 'Show Log') {
          this.output.show(true);
        }
      });
    return { action: CloseAction.DoNotRestart, handled: true };
  }

  /** A mirrord/* request; errors carry the daemon's message. */
  async request<R>(method: string, params: unknown, token?: vscode.CancellationToken): Promise<R> {
    const client = await this.ensureStarted();
    try {
      // An `undefined` token would be sent as a second positional parameter ([params, null]).
      return token ? await client.sendRequest<R>(method, params, token) : await client.sendRequest<R>(method, params);
    } catch (e) {
      // Keeps the error's `data`: callers match its kind (`ErrorKind`), not its words.
      throw requestFailure(e);
    }
  }

  async restart(): Promise<void> {
    this.restarts = [];
    const old = this.client;
    this.client = undefined;
    if (old) {
      await old.stop(5000).catch(() => undefined);
      await old.dispose().catch(() => undefined);
    }
    await this.ensureStarted();
  }

  isRunning(): boolean {
    return !!this.client && this.client.state === State.Running;
  }

  async stop(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    if (c) {
      await c.stop(5000).catch(() => undefined);
    }
  }

  dispose(): void {
    void this.stop().finally(() => this.tail?.stop());
    this.trafficEmitter.dispose();
    this.sessionEmitter.dispose();
    this.readyEmitter.dispose();
  }
}

export function messageOf(e: unknown): string {
  if (e instanceof Error) {
    return e.message;
  }
  if (e && typeof e === 'object' && 'message' in e) {
    return String((e as { message: unknown }).message);
  }
  return String(e);
}

function waitForState(client: LanguageClient, state: State, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    if (client.state === state) {
      resolve();
      return;
    }
    const timer = setTimeout(() => {
      sub.dispose();
      reject(new Error('mirrord-server did not become ready in time'));
    }, timeoutMs);
    const sub = client.onDidChangeState((e) => {
      if (e.newState === state) {
        clearTimeout(timer);
        sub.dispose();
        resolve();
      }
    });
  });
}
