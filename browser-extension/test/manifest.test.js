import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const EXT = join(dirname(fileURLToPath(import.meta.url)), '..');
const manifest = JSON.parse(readFileSync(join(EXT, 'manifest.json'), 'utf8'));

/** Chromium's id for a public key: the first 128 bits of its SHA-256, hex digits 0-f as a-p. */
function extensionId(keyBase64) {
  const hex = createHash('sha256').update(Buffer.from(keyBase64, 'base64')).digest('hex').slice(0, 32);
  return [...hex].map((c) => String.fromCharCode(97 + parseInt(c, 16))).join('');
}

test("the manifest's key gives the id the CLI's link uses", () => {
  const id = extensionId(manifest.key);
  const rust = readFileSync(join(EXT, '..', 'server', 'src', 'browser.rs'), 'utf8');
  const m = /pub const EXTENSION_ID: &str = "([a-p]{32})";/.exec(rust);
  assert.ok(m, 'server/src/browser.rs defines EXTENSION_ID');
  assert.equal(m[1], id);
});

test('no host access is granted by default, only asked for', () => {
  assert.equal(manifest.manifest_version, 3);
  assert.equal(manifest.host_permissions, undefined);
  assert.deepEqual(manifest.permissions.sort(), ['declarativeNetRequest', 'storage']);
  assert.deepEqual(manifest.optional_host_permissions, ['http://*/*', 'https://*/*']);
  assert.equal(manifest.content_scripts, undefined);
});

test('no remote code: scripts are local modules, the CSP allows only the package', () => {
  assert.match(manifest.content_security_policy.extension_pages, /script-src 'self';/);
  const html = readFileSync(join(EXT, 'options.html'), 'utf8');
  for (const [, src] of html.matchAll(/<script[^>]*src="([^"]+)"/g)) assert.ok(!/^[a-z]+:/i.test(src), src);
  for (const f of readdirSync(join(EXT, 'src'))) {
    const js = readFileSync(join(EXT, 'src', f), 'utf8');
    assert.ok(!/\bimport\s*\(|\beval\s*\(|new Function|https?:\/\/[^\s'"`]*\.js/.test(js), `${f} loads or evaluates code`);
    for (const [, from] of js.matchAll(/from\s+'([^']+)'/g)) assert.ok(from.startsWith('./'), `${f} imports ${from}`);
  }
});
