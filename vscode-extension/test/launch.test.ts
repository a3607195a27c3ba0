import * as assert from 'assert';
import { StartSessionResult } from '../src/logic/api';
import {
  applySession,
  decide,
  launchArgs,
  mergePreload,
  mirrordActiveOverride,
  startSessionParams,
} from '../src/logic/launch';

const LAYER = '/opt/mirrord/libmirrord_layer.so';

function session(env: Record<string, string> = {}): StartSessionResult {
  return {
    sessionId: 's1',
    env: {
      LD_PRELOAD: LAYER,
      MIRRORD_SESSION: 's1',
      MIRRORD_PROXY_ADDR: 'unix:/run/user/0/mirrord/s1.sock',
      MIRRORD_CONFIG: '{}',
      ...env,
    },
    envToUnset: ['MIRRORD_ACTIVE', 'MIRRORD_CONFIG_FILE'],
  };
}

describe('MIRRORD_ACTIVE rules', () => {
  it('follows the workspace toggle when MIRRORD_ACTIVE is not set', () => {
    assert.deepStrictEqual(decide({ type: 'node', request: 'launch' }, true), { active: true, reason: 'enabled' });
    assert.deepStrictEqual(decide({ type: 'node', request: 'launch' }, false), { active: false, reason: 'disabled' });
  });

  it('MIRRORD_ACTIVE=1 forces mirrord on with the toggle off', () => {
    const d = decide({ type: 'python', request: 'launch', env: { MIRRORD_ACTIVE: '1' } }, false);
    assert.deepStrictEqual(d, { active: true, reason: 'forced-on' });
  });

  it('MIRRORD_ACTIVE=0 forces mirrord off with the toggle on', () => {
    const d = decide({ type: 'go', request: 'launch', env: { MIRRORD_ACTIVE: '0' } }, true);
    assert.deepStrictEqual(d, { active: false, reason: 'forced-off' });
  });

  it('accepts numbers and true/false spellings, ignores other values', () => {
    assert.strictEqual(mirrordActiveOverride({ MIRRORD_ACTIVE: 1 }), true);
    assert.strictEqual(mirrordActiveOverride({ MIRRORD_ACTIVE: 0 }), false);
    assert.strictEqual(mirrordActiveOverride({ MIRRORD_ACTIVE: 'true' }), true);
    assert.strictEqual(mirrordActiveOverride({ MIRRORD_ACTIVE: ' FALSE ' }), false);
    assert.strictEqual(mirrordActiveOverride({ MIRRORD_ACTIVE: 'maybe' }), undefined);
    assert.strictEqual(mirrordActiveOverride({ MIRRORD_ACTIVE: null }), undefined);
    assert.strictEqual(mirrordActiveOverride(undefined), undefined);
    assert.strictEqual(mirrordActiveOverride(null), undefined);
    // an unrecognised value falls back to the toggle
    assert.strictEqual(decide({ request: 'launch', env: { MIRRORD_ACTIVE: 'maybe' } }, true).active, true);
  });

  it('never touches attach configurations, whatever the toggle or MIRRORD_ACTIVE say', () => {
    assert.deepStrictEqual(decide({ type: 'node', request: 'attach' }, true), { active: false, reason: 'attach' });
    assert.deepStrictEqual(decide({ type: 'node', request: 'attach', env: { MIRRORD_ACTIVE: '1' } }, true), {
      active: false,
      reason: 'attach',
    });
  });

  it('leaves js-debug\'s per-process child sessions alone', () => {
    const d = decide({ type: 'pwa-node', request: 'launch', name: 'app.js [123]', __pendingTargetId: 'abc' }, true);
    assert.deepStrictEqual(d, { active: false, reason: 'child' });
  });

  it('does not start a second session for a configuration that already has one', () => {
    const d = decide({ type: 'node', request: 'launch', env: { MIRRORD_SESSION: 'abc' } }, true);
    assert.deepStrictEqual(d, { active: false, reason: 'already' });
  });
});

describe('startSession parameters', () => {
  it('sends workspaceFolder and launch {program, args, cwd, debuggerType, env}', () => {
    const p = startSessionParams('/ws', {
      type: 'node',
      request: 'launch',
      program: '/ws/app.js',
      args: ['--port', 80],
      env: { A: 'b', N: 3, DROP: null, OBJ: { x: 1 } },
    });
    assert.deepStrictEqual(p, {
      workspaceFolder: '/ws',
      launch: {
        program: '/ws/app.js',
        args: ['--port', '80'],
        cwd: '/ws',
        debuggerType: 'node',
        env: { A: 'b', N: '3' },
      },
    });
  });

  it('uses the configuration cwd, a module name, string args and an explicit target', () => {
    const p = startSessionParams('/ws', { type: 'debugpy', request: 'launch', module: 'app', cwd: '/ws/svc', args: 'a  b' }, 'pid/42');
    assert.strictEqual(p.target, 'pid/42');
    assert.strictEqual(p.launch?.program, 'app');
    assert.strictEqual(p.launch?.cwd, '/ws/svc');
    assert.deepStrictEqual(p.launch?.args, ['a', 'b']);
  });

  it('passes MIRRORD_CONFIG_FILE through launch.env (the daemon resolves the config with it)', () => {
    const p = startSessionParams(undefined, { type: 'node', request: 'launch', env: { MIRRORD_CONFIG_FILE: 'x.mirrord.json' } });
    assert.strictEqual(p.workspaceFolder, undefined);
    assert.deepStrictEqual(p.launch?.env, { MIRRORD_CONFIG_FILE: 'x.mirrord.json' });
  });

  it('launchArgs drops null entries', () => {
    assert.deepStrictEqual(launchArgs(['a', null, undefined, 2]), ['a', '2']);
    assert.deepStrictEqual(launchArgs(undefined), []);
    assert.deepStrictEqual(launchArgs('  '), []);
  });
});

describe('env merging', () => {
  it('adds the session env to the launch env, keeping the launch config\'s own variables', () => {
    const cfg = { type: 'node', request: 'launch', name: 'app', program: 'app.js', env: { PORT: '80', DEBUG: '1' } };
    const out = applySession(cfg, session());
    assert.deepStrictEqual(out.env, {
      PORT: '80',
      DEBUG: '1',
      LD_PRELOAD: LAYER,
      MIRRORD_SESSION: 's1',
      MIRRORD_PROXY_ADDR: 'unix:/run/user/0/mirrord/s1.sock',
      MIRRORD_CONFIG: '{}',
    });
    assert.strictEqual(out.program, 'app.js');
    assert.strictEqual(out.name, 'app');
    // the input is not modified
    assert.deepStrictEqual(cfg.env, { PORT: '80', DEBUG: '1' });
  });

  it('creates env when the configuration has none', () => {
    const out = applySession({ type: 'cppdbg', request: 'launch' }, session());
    assert.strictEqual((out.env as Record<string, string>).MIRRORD_SESSION, 's1');
  });

  it('session variables override the configuration\'s', () => {
    const out = applySession({ type: 'node', request: 'launch', env: { MIRRORD_CONFIG: 'old' } }, session());
    assert.strictEqual((out.env as Record<string, string>).MIRRORD_CONFIG, '{}');
  });

  it('keeps the launch config\'s LD_PRELOAD when the daemon already appended the layer', () => {
    const out = applySession(
      { type: 'node', request: 'launch', env: { LD_PRELOAD: '/usr/lib/libfoo.so' } },
      session({ LD_PRELOAD: `/usr/lib/libfoo.so:${LAYER}` }),
    );
    assert.strictEqual((out.env as Record<string, string>).LD_PRELOAD, `/usr/lib/libfoo.so:${LAYER}`);
  });

  it('keeps the launch config\'s LD_PRELOAD when the daemon returned only the layer (reused session)', () => {
    const out = applySession({ type: 'node', request: 'launch', env: { LD_PRELOAD: '/a.so /b.so' } }, session());
    assert.strictEqual((out.env as Record<string, string>).LD_PRELOAD, `/a.so:/b.so:${LAYER}`);
    assert.strictEqual(mergePreload(undefined, LAYER), LAYER);
    assert.strictEqual(mergePreload(`${LAYER}`, LAYER), LAYER);
  });

  it('removes envToUnset (MIRRORD_ACTIVE, MIRRORD_CONFIG_FILE) from the launch env', () => {
    const out = applySession(
      { type: 'python', request: 'launch', env: { MIRRORD_ACTIVE: '1', MIRRORD_CONFIG_FILE: 'f.json', KEEP: 'x' } },
      session(),
      { inherited: {} },
    );
    const env = out.env as Record<string, unknown>;
    assert.ok(!('MIRRORD_ACTIVE' in env));
    assert.ok(!('MIRRORD_CONFIG_FILE' in env));
    assert.strictEqual(env.KEEP, 'x');
  });

  it('unsets inherited variables with null for js-debug (node), but not for other debuggers', () => {
    const inherited = { MIRRORD_ACTIVE: '1' };
    const node = applySession({ type: 'node', request: 'launch' }, session(), { inherited });
    assert.strictEqual((node.env as Record<string, unknown>).MIRRORD_ACTIVE, null);
    const py = applySession({ type: 'debugpy', request: 'launch' }, session(), { inherited });
    assert.ok(!('MIRRORD_ACTIVE' in (py.env as Record<string, unknown>)));
  });
});
