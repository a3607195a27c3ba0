import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applySetup, parseSetupFragment, setupFragment } from '../src/link.js';

test('a setup fragment round-trips, special characters included', () => {
  const fields = { header: 'x-user', value: 'alice & bob=1#2', filter: '^x-user: alice & bob=1#2$', patterns: ['http://10.244.0.10/*', 'https://*.example.com/*'] };
  assert.deepEqual(parseSetupFragment(setupFragment(fields)), fields);
});

test('the CLI format parses (percent-encoded, as server/src/browser.rs writes it)', () => {
  assert.deepEqual(parseSetupFragment('#header=x-user&value=alice&filter=x-user%3A%20alice'), { header: 'x-user', value: 'alice', filter: 'x-user: alice' });
  // A filter without a concrete value: only the filter.
  assert.deepEqual(parseSetupFragment('#filter=%5Ex-debug%3A%20.%2A'), { filter: '^x-debug: .*' });
  assert.deepEqual(parseSetupFragment(''), {});
  assert.deepEqual(parseSetupFragment('#'), {});
  assert.deepEqual(parseSetupFragment('#unknown=1'), {});
});

test('a link fills the form but never turns the rule on', () => {
  const stored = { enabled: true, header: 'x-user', value: 'old', filter: '', patterns: ['http://a.test/*'] };
  const next = applySetup(stored, { header: 'x-user', value: 'alice', filter: 'x-user: alice', patterns: ['http://a.test/*', 'http://b.test/*'] });
  assert.deepEqual(next, { enabled: false, header: 'x-user', value: 'alice', filter: 'x-user: alice', patterns: ['http://a.test/*', 'http://b.test/*'] });
  assert.equal(stored.patterns.length, 1, 'the stored configuration is not mutated');
  // A filter-only link clears nothing the user typed.
  assert.equal(applySetup(stored, { filter: '^x-debug' }).value, 'old');
});
