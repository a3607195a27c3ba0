import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  RESOURCE_TYPES,
  buildRules,
  filterMatches,
  headerNameError,
  headerValueError,
  originsFor,
  parsePattern,
  patternRegex,
} from '../src/rules.js';

/** Whether the rule regex of `pattern` matches `url` (JS RegExp agrees with RE2 on this subset). */
const matches = (pattern, url) => new RegExp(patternRegex(parsePattern(pattern)), 'i').test(url);

test('a pattern asks for exactly its origin', () => {
  assert.equal(parsePattern('http://10.244.0.10/*').origin, 'http://10.244.0.10/*');
  assert.equal(parsePattern('https://*.Example.com/api/*').origin, 'https://*.example.com/*');
  assert.equal(parsePattern('*://localhost:3000/app').origin, '*://localhost:3000/*');
  assert.equal(parsePattern('http://[::1]:8080/*').origin, 'http://[::1]:8080/*');
  assert.equal(parsePattern('http://host').path, '/*');
});

test('bad patterns are refused with a reason', () => {
  for (const bad of ['', 'example.com', 'ftp://x/*', 'http:///x', 'http://a*b.com/*', 'http://x:0/*', 'http://x:70000/*', 'http://exa mple/*', '<all_urls>']) {
    assert.throws(() => parsePattern(bad), /pattern|host|port/, bad);
  }
});

test('rule regexes match what the pattern matches and nothing else', () => {
  assert.ok(matches('http://10.244.0.10/*', 'http://10.244.0.10/'));
  assert.ok(matches('http://10.244.0.10/*', 'http://10.244.0.10/a/b?c=d'));
  assert.ok(!matches('http://10.244.0.10/*', 'http://10.244.0.100/'));
  assert.ok(!matches('http://10.244.0.10/*', 'https://10.244.0.10/'));
  assert.ok(!matches('http://10.244.0.10/*', 'http://evil.com/?u=http://10.244.0.10/'));
  assert.ok(matches('*://x.test/*', 'https://x.test/'));
  assert.ok(matches('https://*.example.com/api/*', 'https://example.com/api/v1'));
  assert.ok(matches('https://*.example.com/api/*', 'https://a.b.example.com/api/'));
  assert.ok(!matches('https://*.example.com/api/*', 'https://example.com/web/'));
  assert.ok(!matches('https://*.example.com/api/*', 'https://badexample.com/api/'));
  // Without a port in the pattern any port matches (Chrome's match patterns do the same).
  assert.ok(matches('http://localhost/*', 'http://localhost:3000/x'));
  assert.ok(matches('http://localhost:3000/*', 'http://localhost:3000/x'));
  assert.ok(!matches('http://localhost:3000/*', 'http://localhost:3001/x'));
  // A default port never appears in URLs.
  assert.ok(matches('http://a.test:80/*', 'http://a.test/x'));
  // Regex characters in the path are literal.
  assert.ok(matches('http://a.test/v1.0/(x)', 'http://a.test/v1.0/(x)'));
  assert.ok(!matches('http://a.test/v1.0/(x)', 'http://a.test/v1x0/(x)'));
});

test('header names and values are checked', () => {
  assert.equal(headerNameError('x-user'), null);
  assert.match(headerNameError(''), /empty/);
  assert.match(headerNameError('x user'), /not a valid header name/);
  assert.match(headerNameError('x-user:'), /not a valid header name/);
  assert.match(headerNameError('Host'), /browser manages/);
  assert.equal(headerValueError('alice'), null);
  assert.equal(headerValueError('a b\tc'), null);
  assert.match(headerValueError('a\r\nx-evil: 1'), /control characters/);
  assert.match(headerValueError(' alice'), /whitespace/);
  assert.match(headerValueError(''), /empty/);
});

test('an enabled configuration becomes one modifyHeaders rule per pattern', () => {
  const rules = buildRules({ enabled: true, header: 'x-user', value: 'alice', patterns: ['http://10.244.0.10/*', 'https://*.example.com/*'] });
  assert.equal(rules.length, 2);
  assert.deepEqual(rules.map((r) => r.id), [1, 2]);
  for (const r of rules) {
    assert.deepEqual(r.action, { type: 'modifyHeaders', requestHeaders: [{ header: 'x-user', operation: 'set', value: 'alice' }] });
    assert.ok(r.condition.resourceTypes.includes('main_frame'), 'navigations must carry the header');
    assert.deepEqual(r.condition.resourceTypes, [...RESOURCE_TYPES]);
  }
  assert.equal(rules[0].condition.regexFilter, patternRegex(parsePattern('http://10.244.0.10/*')));
});

test('off or invalid configurations install nothing', () => {
  assert.deepEqual(buildRules({ enabled: false, header: 'x-user', value: 'alice', patterns: ['http://a.test/*'] }), []);
  assert.deepEqual(buildRules(undefined), []);
  assert.throws(() => buildRules({ enabled: true, header: 'bad name', value: 'v', patterns: ['http://a.test/*'] }), /header name/);
  assert.throws(() => buildRules({ enabled: true, header: 'x', value: 'a\nb', patterns: ['http://a.test/*'] }), /control/);
  assert.throws(() => buildRules({ enabled: true, header: 'x', value: 'v', patterns: ['nope'] }), /pattern/);
});

test('origins are deduplicated', () => {
  assert.deepEqual(originsFor(['http://a.test/x/*', 'http://a.test/y/*', 'https://b.test/*']), ['http://a.test/*', 'https://b.test/*']);
  assert.deepEqual(originsFor([]), []);
});

test("the session's filter is checked the way the agent applies it", () => {
  assert.equal(filterMatches('x-user: alice', 'X-User', 'alice'), true);
  assert.equal(filterMatches('^x-debug: .+$', 'x-debug', 'me'), true);
  assert.equal(filterMatches('x-user: alice', 'x-user', 'bob'), false);
  assert.equal(filterMatches('(?i)x-user', 'x-user', 'a'), null);
});
