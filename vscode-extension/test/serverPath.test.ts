import * as assert from 'assert';
import { resolveServerPath, serverArgs } from '../src/logic/serverPath';
import { defaultConfigText, isConfigFile } from '../src/logic/config';

describe('server path', () => {
  const base = { extensionPath: '/ext', home: '/home/u', platform: 'linux' as NodeJS.Platform };

  it('prefers the mirrord.serverPath setting (with ~ expanded)', () => {
    const l = resolveServerPath({ ...base, setting: '~/bin/mirrord-server', pathEnv: '/usr/bin', isExecutable: () => true });
    assert.deepStrictEqual(l, { path: '/home/u/bin/mirrord-server', source: 'setting' });
  });

  it('then PATH, then the bundled bin/', () => {
    const onPath = resolveServerPath({ ...base, pathEnv: '/a:/b', isExecutable: (p) => p === '/b/mirrord-server' });
    assert.deepStrictEqual(onPath, { path: '/b/mirrord-server', source: 'path' });
    const bundled = resolveServerPath({ ...base, pathEnv: '/a', isExecutable: (p) => p === '/ext/bin/mirrord-server' });
    assert.deepStrictEqual(bundled, { path: '/ext/bin/mirrord-server', source: 'bundled' });
    assert.strictEqual(resolveServerPath({ ...base, pathEnv: '/a', isExecutable: () => false }), undefined);
  });

  it('starts the daemon on stdio with the log file the output channel follows', () => {
    assert.deepStrictEqual(serverArgs('debug', [], '/logs/s.log'), ['--stdio', '--log-level', 'debug', '--log-file', '/logs/s.log']);
    // the user's own --log-file wins
    assert.deepStrictEqual(serverArgs('', ['--log-file=/tmp/x'], '/logs/s.log'), ['--stdio', '--log-file=/tmp/x']);
    assert.deepStrictEqual(serverArgs(undefined, undefined), ['--stdio']);
  });
});

describe('configuration file', () => {
  it('the default config steals incoming traffic and routes outgoing and DNS', () => {
    assert.deepStrictEqual(JSON.parse(defaultConfigText()), {
      feature: { network: { incoming: 'steal', outgoing: true, dns: true } },
    });
  });

  it('matches the language client selector', () => {
    assert.ok(isConfigFile('/ws/.mirrord/mirrord.json'));
    assert.ok(isConfigFile('/ws/.mirrord/other.json'));
    assert.ok(isConfigFile('/ws/dev.mirrord.json'));
    assert.ok(!isConfigFile('/ws/package.json'));
  });
});
