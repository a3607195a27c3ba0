// Drives Chromium with the unpacked extension as a developer would: open the setup link that
// `mirrord exec` printed, add the pod's URL pattern, turn the rule on, load pages from the pod,
// turn it off, load again. Started by tests/tests/browser.rs in the cluster's `client`
// namespace; it reports what each page showed as JSON lines on stdout
// (`{"step": ..., ...}`), and the Rust test decides what is right.
//
// Env: E2E_EXTENSION_DIR (the unpacked zip), E2E_LINK (the CLI's link), E2E_POD_URL
// (http://10.244.0.10), E2E_PROFILE (fresh user-data-dir), E2E_SHOTS (screenshots on failure).
//
// One stand-in for a human: Chrome's host-permission prompt is browser UI that headless
// Chromium cannot show and nothing can click. Before the options page asks, the driver grants
// the pod's site from chrome://extensions (the API behind its "Site access: on specific sites"
// setting, which a user can also use); the extension's own chrome.permissions.request then
// resolves as granted, exactly as after the user clicks "Allow".

import { chromium } from 'playwright-core';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const EXT = env('E2E_EXTENSION_DIR');
const LINK = env('E2E_LINK');
const POD_URL = env('E2E_POD_URL').replace(/\/$/, '');
const PROFILE = env('E2E_PROFILE');
const SHOTS = env('E2E_SHOTS');

const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
const log = (...a) => process.stderr.write(`[browser-e2e] ${a.join(' ')}\n`);

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  rmSync(PROFILE, { recursive: true, force: true });
  const context = await chromium.launchPersistentContext(PROFILE, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    // Playwright's defaults disable extensions and pick the old headless mode, which cannot
    // run them; the new headless mode is the full browser without a window.
    ignoreDefaultArgs: ['--disable-extensions', '--headless'],
    args: [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
      '--no-proxy-server',
      `--disable-extensions-except=${EXT}`,
      `--load-extension=${EXT}`,
    ],
    timeout: 60000,
  });
  context.setDefaultTimeout(20000);
  const pages = [];
  try {
    // The extension's service worker names its id: it must be the one the link points to
    // (the manifest's `key` makes it fixed).
    const worker = context.serviceWorkers()[0] ?? (await context.waitForEvent('serviceworker', { timeout: 20000 }));
    const id = new URL(worker.url()).host;
    const linkId = new URL(LINK).host;
    // Installed: no host access until the user chooses a site.
    const probe = await context.newPage();
    await probe.goto(`chrome-extension://${id}/options.html`);
    const granted = (await probe.evaluate(() => chrome.permissions.getAll())).origins;
    await probe.close();
    emit({ step: 'loaded', id, linkId, origins: granted });
    if (id !== linkId) throw new Error(`the extension loaded as ${id}, the link opens ${linkId}`);

    const site = await context.newPage();
    pages.push(site);
    const visit = async (step, path) => {
      const resp = await site.goto(`${POD_URL}${path}`, { waitUntil: 'load' });
      emit({ step, status: resp?.status(), servedBy: (await resp?.allHeaders())?.['x-served-by'] ?? null, body: await site.innerText('body') });
    };

    await visit('before', '/browser-before');

    // The permission stand-in (see the top of this file).
    const settings = await context.newPage();
    pages.push(settings);
    await settings.goto('chrome://extensions');
    await settings.evaluate(([extId, host]) => chrome.developerPrivate.addHostPermission(extId, host), [id, `${POD_URL}/*`]);
    await settings.close();

    const opts = await context.newPage();
    pages.push(opts);
    await opts.goto(LINK);
    await opts.locator('body[data-ready=true]').waitFor();
    emit({
      step: 'link',
      header: await opts.inputValue('#header'),
      value: await opts.inputValue('#value'),
      filter: await opts.textContent('#filter'),
      status: await opts.getAttribute('#status', 'data-state'),
    });

    // Only the pod's /app/ pages: the rule must leave the rest of the site alone.
    await opts.fill('#new-pattern', `${POD_URL}/app/*`);
    await opts.click('#add-pattern');
    await opts.locator('#patterns li', { hasText: `${POD_URL}/app/*` }).waitFor();
    await opts.check('#enabled');
    await opts.locator('#status[data-state=on]').waitFor();
    emit({
      step: 'on-status',
      text: await opts.textContent('#status'),
      origins: (await opts.evaluate(() => chrome.permissions.getAll())).origins,
      rules: (await opts.evaluate(() => chrome.declarativeNetRequest.getDynamicRules())).length,
    });

    await site.bringToFront();
    await visit('outside', '/browser-outside');
    await visit('on', '/app/browser-on');
    // A request the page itself makes (same origin, so the pattern covers its initiator too).
    const xhr = await site.evaluate(async () => {
      const r = await fetch('/app/browser-xhr', { cache: 'no-store' });
      return { status: r.status, servedBy: r.headers.get('x-served-by'), body: await r.text() };
    });
    emit({ step: 'xhr', ...xhr });

    await opts.bringToFront();
    await opts.uncheck('#enabled');
    await opts.locator('#status[data-state=off]').waitFor();
    emit({ step: 'off-status', text: await opts.textContent('#status') });

    await site.bringToFront();
    await visit('off', '/app/browser-off');

    // Removing the pattern gives the site's access back.
    await opts.bringToFront();
    await opts.click(`#patterns li:has-text("${POD_URL}/app/*") button`);
    await opts.locator('#patterns li').first().waitFor({ state: 'detached' });
    emit({
      step: 'removed',
      origins: (await opts.evaluate(() => chrome.permissions.getAll())).origins,
      rules: (await opts.evaluate(() => chrome.declarativeNetRequest.getDynamicRules())).length,
    });
    emit({ step: 'done' });
  } catch (e) {
    for (const [i, p] of pages.entries()) {
      await p.screenshot({ path: join(SHOTS, `failed-${i}.png`) }).catch(() => undefined);
    }
    throw e;
  } finally {
    await context.close().catch(() => undefined);
  }
}

main().catch((e) => {
  log(`FAILED: ${e.stack || e.message}`);
  emit({ step: 'error', message: e.message });
  process.exit(1);
});
