import * as assert from 'assert';
import { requestFailure } from '../src/logic/api';
import { isNoTargetError, orderTargets, rememberTarget } from '../src/logic/targets';

describe('target picker', () => {
  const targets = [
    { path: 'netns/a', available: true },
    { path: 'pid/10', available: true },
    { path: 'pid/20', available: false },
  ];

  it('lists the most recent target first, then recent ones, then the rest in daemon order', () => {
    const items = orderTargets(targets, ['pid/20', 'gone/1', 'pid/10']);
    assert.deepStrictEqual(
      items.map((i) => [i.target, i.description]),
      [
        ['pid/20', 'most recent, not available'],
        ['pid/10', 'recent'],
        ['netns/a', undefined],
      ],
    );
  });

  it('remembers targets most recent first, without duplicates, bounded', () => {
    assert.deepStrictEqual(rememberTarget(['a', 'b', 'c'], 'b'), ['b', 'a', 'c']);
    assert.deepStrictEqual(rememberTarget(['a', 'b'], 'c', 2), ['c', 'a']);
  });

  it('recognises the daemon\'s "no target" error by its kind, not its words', () => {
    // What vscode-languageclient rejects with: a ResponseError carrying the JSON-RPC `data`.
    const failure = (message: string, data?: unknown) => Object.assign(new Error(message), { code: 1, data });
    assert.ok(isNoTargetError(failure('anything at all', { kind: 'no_target' })));
    assert.ok(!isNoTargetError(failure('no target: choose one', { kind: 'session_start' })));
    assert.ok(!isNoTargetError(failure('no target: choose one')));
    assert.ok(!isNoTargetError(failure('no target', 'no_target')));
    assert.ok(!isNoTargetError(undefined));
    // The server wrapper's rethrow keeps the kind.
    const wrapped = requestFailure(failure('no target: choose one', { kind: 'no_target' }));
    assert.strictEqual(wrapped.message, 'no target: choose one');
    assert.ok(isNoTargetError(wrapped));
    assert.ok(!isNoTargetError(requestFailure(new Error('no target'))));
  });
});
