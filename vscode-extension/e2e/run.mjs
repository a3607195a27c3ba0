// Drives a real VS Code (code-server) in Chromium through playwright-core, as a person would:
// turn mirrord on from the status bar, start debugging, send requests to the pod from the client
// namespace, check the local app answered and the mirrord Traffic panel shows them, restart the
// debug session and check again, then open an invalid .mirrord/mirrord.json and check the
// Problems panel. Started by tests/tests/vscode.rs in the cluster's dev namespace.
//
// Env: E2E_URL, E2E_WORKSPACE, E2E_CLIENT_NS, E2E_POD_URL, E2E_SCREENSHOTS, E2E_BROWSER_PROFILE.

import { chromium } from 'playwright-core';
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync, rmSync, readdirSync, readlinkSync, readFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const URL_ = env('E2E_URL');
const WS = env('E2E_WORKSPACE');
const CLIENT_NS = env('E2E_CLIENT_NS');
const POD_URL = env('E2E_POD_URL');
const SHOTS = env('E2E_SCREENSHOTS');
const PROFILE = env('E2E_BROWSER_PROFILE');
const SERVER_BIN = env('E2E_SERVER_BIN');
const TARGET = env('E2E_TARGET');
const POD_NS = env('E2E_POD_NS');
const POD_GREETING = env('E2E_POD_GREETING');

const t0 = Date.now();
const log = (...a) => console.log(`[e2e +${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const results = [];
let page;

/** Polls `fn` until it returns a truthy value; fails after `ms` with `what`. */
async function until(what, ms, fn, every = 500) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(every);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
}

/** curl from the client namespace to the pod: {status, headers, body}. */
function curl(path) {
  return new Promise((resolve, reject) => {
    execFile(
      'ip',
      ['netns', 'exec', CLIENT_NS, 'curl', '-s', '-i', '-m', '30', '-H', 'x-e2e: vscode', `${POD_URL.replace(/\/$/, '')}${path}`],
      { timeout: 40000 },
      (err, stdout) => {
        if (err) return reject(new Error(`curl ${path}: ${err.message}`));
        const [head, ...rest] = stdout.split(/\r?\n\r?\n/);
        const lines = head.split(/\r?\n/);
        const headers = {};
        for (const l of lines.slice(1)) {
          const i = l.indexOf(':');
          if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
        }
        resolve({ status: Number(lines[0].split(' ')[1]), headers, body: rest.join('\n\n') });
      },
    );
  });
}

/** Pids of the mirrord-server processes in this network namespace (the ones this test's
 * code-server started: the driver runs in the test's own dev namespace). */
function serverPids() {
  const ownNs = readlinkSync('/proc/self/ns/net');
  const pids = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readlinkSync(`/proc/${d}/ns/net`) !== ownNs) continue;
      if (readlinkSync(`/proc/${d}/exe`).replace(/ \(deleted\)$/, '') !== SERVER_BIN) continue;
      pids.push(Number(d));
    } catch {
      // gone, or not ours to read
    }
  }
  return pids;
}

async function shot(name) {
  const file = join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file });
  log(`screenshot: ${file}`);
  return file;
}

async function step(name, fn) {
  log(`step: ${name}`);
  try {
    await fn();
    results.push({ name, ok: true });
    log(`ok: ${name}`);
  } catch (e) {
    results.push({ name, ok: false, error: e.message });
    log(`FAILED: ${name}: ${e.stack || e.message}`);
    await shot(`failed-${name.replace(/[^a-z0-9]+/gi, '-')}`).catch(() => undefined);
    throw e;
  }
}

const reEscape = (t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Runs a command from the command palette: clicks the entry whose label is exactly `title`. */
async function command(title) {
  await page.keyboard.press('Escape');
  await page.keyboard.press('Control+Shift+P');
  const input = page.locator('.quick-input-widget input.input');
  await input.waitFor({ state: 'visible', timeout: 10000 });
  await input.fill(`>${title}`);
  const row = page
    .locator('.quick-input-widget .monaco-list-row')
    .filter({ has: page.locator('.label-name', { hasText: new RegExp(`^\\s*${reEscape(title)}\\s*$`) }) })
    .first();
  await row.waitFor({ state: 'visible', timeout: 10000 });
  await row.click();
  await input.waitFor({ state: 'hidden', timeout: 10000 }).catch(() => undefined);
}

/** The traffic webview's document (VS Code nests it in two iframes): the frame with #traffic. */
async function trafficFrame() {
  return until('the mirrord Traffic webview', 30000, async () => {
    for (const f of page.frames()) {
      if (f === page.mainFrame()) continue;
      if (await f.$('table#traffic').catch(() => null)) return f;
    }
    return undefined;
  });
}

async function requestRow(path) {
  const frame = await trafficFrame();
  const row = frame.locator('tr.row', { hasText: `GET ${path}` }).first();
  await row.waitFor({ state: 'visible', timeout: 30000 });
  return { frame, row };
}

/** Requests `/wait-N` until the local app answers (the debuggee is up and stealing). */
async function waitForLocal(label) {
  let n = 0;
  return until(`the local app to answer requests to the pod (${label})`, 90000, async () => {
    const r = await curl(`/wait-${label}-${n++}`).catch(() => undefined);
    return r && r.headers['x-served-by'] === 'local' ? r : undefined;
  }, 1000);
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  rmSync(PROFILE, { recursive: true, force: true });
  const context = await chromium.launchPersistentContext(PROFILE, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1600, height: 1000 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
    ],
    timeout: 60000,
  });
  context.setDefaultTimeout(20000);
  page = context.pages()[0] ?? (await context.newPage());
  page.on('pageerror', (e) => log(`page error: ${e.message}`));

  try {
    await step('open the workspace', async () => {
      await page.goto(`${URL_}?folder=${encodeURIComponent(WS)}`, { timeout: 60000 });
      await page.locator('.monaco-workbench').waitFor({ timeout: 60000 });
      await page.locator('.explorer-folders-view, .explorer-viewlet').first().waitFor({ timeout: 60000 }).catch(() => undefined);
    });

    const status = (label) => page.locator(`.statusbar-item [aria-label="${label}"], .statusbar-item[aria-label="${label}"]`).first();
    await step('turn mirrord on from the status bar', async () => {
      const either = page.locator('.statusbar-item [aria-label^="mirrord: "], .statusbar-item[aria-label^="mirrord: "]').first();
      await either.waitFor({ timeout: 60000 });
      if (await status('mirrord: on').isVisible()) {
        // A profile left on by an earlier run: the toggle turns it off first.
        await status('mirrord: on').click();
      }
      await status('mirrord: off').waitFor({ timeout: 10000 });
      await status('mirrord: off').click();
      await status('mirrord: on').waitFor({ timeout: 10000 });
    });

    let firstPid;
    let sessionOfFirst;
    await step('start debugging (F5) and get a stolen request served by the local app', async () => {
      // Focus the workbench, then F5 (the only launch configuration is selected).
      await page.locator('.monaco-workbench .part.editor').first().click({ position: { x: 200, y: 200 } }).catch(() => undefined);
      await page.keyboard.press('F5');
      await page.locator('.debug-toolbar').first().waitFor({ timeout: 60000 });
      await waitForLocal('first');
      const r = await curl('/e2e-1?from=client');
      if (r.status !== 200 || r.headers['x-served-by'] !== 'local') {
        throw new Error(`expected 200 from the local app, got ${r.status} ${JSON.stringify(r.headers)} ${r.body}`);
      }
      if (!r.body.includes('local: GET /e2e-1?from=client')) throw new Error(`unexpected body ${r.body}`);
      // feature.env: the launch got the pod process's environment through startSession's env.
      if (r.headers['x-pod-greeting'] !== POD_GREETING) {
        throw new Error(`the launch lacks the pod's POD_GREETING: got ${JSON.stringify(r.headers['x-pod-greeting'])}, the pod has ${JSON.stringify(POD_GREETING)}`);
      }
      firstPid = r.headers['x-pid'];
      log(`served by the local app, pid ${firstPid}`);
    });

    await step('the request appears in the mirrord Traffic panel, with its headers on click', async () => {
      await command('mirrord: Show Traffic');
      const { frame, row } = await requestRow('/e2e-1'); // the daemon reports the path without the query
      const text = await row.innerText();
      for (const want of ['HTTP in', '200', 'steal']) {
        if (!text.includes(want)) throw new Error(`row "${text}" lacks "${want}"`);
      }
      sessionOfFirst = await row.getAttribute('data-session');
      await row.click();
      const id = await row.getAttribute('data-id');
      const details = frame.locator(`tr.details[data-for="${id}"]`);
      await details.waitFor({ state: 'visible', timeout: 5000 });
      const dt = await details.innerText();
      if (!/x-e2e\s+vscode/.test(dt)) throw new Error(`headers not shown: ${dt}`);
      // The filter box narrows the rows.
      const filter = frame.locator('#filter');
      await filter.fill('e2e-1');
      await until('the filter to hide other rows', 5000, async () => {
        const rows = await frame.locator('tr.row').allInnerTexts();
        return rows.length >= 1 && rows.every((t) => t.includes('e2e-1'));
      });
      await filter.fill('');
      await shot('1-traffic-after-first-request');
    });

    await step('the debugger works with mirrord: a stolen request stops at a `debugger` statement', async () => {
      const pending = curl('/e2e-break');
      const paused = page.locator('.debug-toolbar .codicon-debug-continue').first();
      await paused.waitFor({ state: 'visible', timeout: 30000 });
      await shot('2-paused-in-the-debugger');
      await command('Debug: Continue');
      const r = await pending;
      if (r.headers['x-served-by'] !== 'local') throw new Error(`after continuing: ${r.status} ${JSON.stringify(r.headers)}`);
    });

    await step('restart the debug session: the new process is served, in the same session', async () => {
      await command('Debug: Restart');
      await until('a new debuggee process to answer', 90000, async () => {
        const r = await curl('/wait-restart').catch(() => undefined);
        return r && r.headers['x-served-by'] === 'local' && r.headers['x-pid'] !== firstPid;
      }, 1000);
      const r = await curl('/e2e-2?after=restart');
      if (r.status !== 200 || r.headers['x-served-by'] !== 'local') {
        throw new Error(`expected 200 from the local app after restart, got ${r.status} ${JSON.stringify(r.headers)}`);
      }
      log(`after restart served by pid ${r.headers['x-pid']} (before: ${firstPid})`);
      await command('mirrord: Show Traffic');
      const { row } = await requestRow('/e2e-2');
      const session = await row.getAttribute('data-session');
      if (session !== sessionOfFirst) throw new Error(`restart used session ${session}, not ${sessionOfFirst}`);
      await shot('3-traffic-after-restart');
    });

    await step('stop debugging: the pod serves again', async () => {
      await command('Debug: Stop');
      await page.locator('.debug-toolbar').first().waitFor({ state: 'hidden', timeout: 30000 });
      await until('the pod to answer again', 30000, async () => {
        const r = await curl('/after-stop').catch(() => undefined);
        return r && r.headers['x-served-by'] === 'pod';
      }, 1000);
    });

    await step('mirrord-server dies: the extension restarts it and says so', async () => {
      const before = serverPids();
      if (before.length !== 1) throw new Error(`expected one mirrord-server in this namespace, found ${before}`);
      process.kill(before[0], 'SIGKILL');
      const toast = page.locator('.notifications-toasts .notification-toast', { hasText: 'mirrord-server stopped unexpectedly and was restarted' }).first();
      await toast.waitFor({ timeout: 30000 });
      const after = await until('a new mirrord-server', 30000, async () => {
        const now = serverPids();
        return now.length === 1 && now[0] !== before[0] ? now : undefined;
      });
      log(`mirrord-server ${before[0]} killed; restarted as ${after[0]}`);
      await shot('4-server-restarted');
    });

    await step('an invalid .mirrord/mirrord.json shows the daemon\'s diagnostic in Problems', async () => {
      writeFileSync(
        join(WS, '.mirrord', 'mirrord.json'),
        '{\n  "feature": {\n    "network": {\n      "incoming": "stael"\n    }\n  }\n}\n',
      );
      await page.keyboard.press('Escape');
      await page.keyboard.press('Control+P');
      const input = page.locator('.quick-input-widget input.input');
      await input.waitFor({ state: 'visible', timeout: 10000 });
      await input.fill('.mirrord/mirrord.json');
      await page.locator('.quick-input-widget .monaco-list-row', { hasText: 'mirrord.json' }).first().waitFor({ timeout: 10000 });
      await input.press('Enter');
      await page.locator('.tab', { hasText: 'mirrord.json' }).first().waitFor({ timeout: 10000 });
      await command('Problems: Focus on Problems View');
      const problem = page.locator('.markers-panel .monaco-list-row', { hasText: 'unknown variant' }).first();
      await problem.waitFor({ timeout: 30000 });
      const text = await problem.innerText();
      if (!text.includes('stael')) throw new Error(`unexpected problem text: ${text}`);
      log(`problem: ${text.replace(/\s+/g, ' ')}`);
      await shot('5-problems-invalid-config');
    });

    await step('a config without a target: "Create Default Configuration", then the target picker asks', async () => {
      await page.keyboard.press('Escape');
      await command('View: Close All Editors');
      unlinkSync(join(WS, '.mirrord', 'mirrord.json'));
      await command('mirrord: Create Default Configuration');
      await page.locator('.tab', { hasText: 'mirrord.json' }).first().waitFor({ timeout: 10000 });
      const created = JSON.parse(readFileSync(join(WS, '.mirrord', 'mirrord.json'), 'utf8'));
      const want = { feature: { network: { incoming: 'steal', outgoing: true, dns: true } } };
      if (JSON.stringify(created) !== JSON.stringify(want)) throw new Error(`created ${JSON.stringify(created)}`);
      await page.locator('.monaco-workbench .part.editor').first().click({ position: { x: 200, y: 300 } }).catch(() => undefined);
      await command('mirrord: Run with mirrord');
      const input = page.locator('.quick-input-widget input.input');
      await page.locator('.quick-input-widget', { hasText: 'mirrord: choose the target' }).waitFor({ timeout: 30000 });
      const exact = (label) => page
        .locator('.quick-input-widget .monaco-list-row')
        .filter({ has: page.locator('.label-name', { hasText: new RegExp(`^\\s*${reEscape(label)}\\s*$`) }) })
        .first();
      await input.fill(TARGET);
      let chosen = TARGET;
      // `pid/N` is listed for the first process of each namespace; the namespace itself always is.
      if (!(await exact(TARGET).isVisible({ timeout: 3000 }).catch(() => false))) {
        chosen = `netns/${POD_NS}`;
        await input.fill(chosen);
      }
      await shot('6-target-picker');
      await exact(chosen).click();
      log(`picked ${chosen}`);
      await page.locator('.debug-toolbar').first().waitFor({ timeout: 60000 });
      await waitForLocal('picker');
      const r = await curl('/e2e-3');
      if (r.headers['x-served-by'] !== 'local') throw new Error(`after picking: ${r.status} ${JSON.stringify(r.headers)}`);
      await command('Debug: Stop');
    });
  } finally {
    await context.close().catch(() => undefined);
    const passed = results.filter((r) => r.ok).length;
    const failed = results.length - passed;
    writeFileSync(join(SHOTS, 'results.json'), JSON.stringify(results, null, 2));
    log(`e2e: ${passed} passed, ${failed} failed`);
  }
}

main().then(
  () => process.exit(results.every((r) => r.ok) ? 0 : 1),
  (e) => {
    log(`error: ${e.stack || e.message}`);
    process.exit(1);
  },
);
