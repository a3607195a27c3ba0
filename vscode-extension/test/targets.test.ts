import * as assert from 'assert';
import { requestFailure } from '../src/logic/api';
import {
  SWITCH_NAMESPACE,
  isNoTargetError,
  namespaceItems,
  orderTargets,
  pickerItems,
  rememberTarget,
} from '../src/logic/targets';

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

  it('offers a namespace switch only when the daemon lists namespaces', () => {
    const cluster = {
      targets: [
        { path: 'deployment/payment-api', available: true },
        { path: 'pod/half-ready-1', available: false },
      ],
      namespaces: ['payments', 'default'],
    };
    const items = pickerItems(cluster, [], 'payments');
    assert.deepStrictEqual(
      items.map((i) => i.target),
      ['deployment/payment-api', 'pod/half-ready-1', SWITCH_NAMESPACE],
    );
    assert.strictEqual(items[1].description, 'not available');
    assert.strictEqual(items[2].description, 'now: payments');
    assert.ok(!pickerItems({ targets }, []).some((i) => i.target === SWITCH_NAMESPACE));
    assert.ok(!pickerItems({ targets, namespaces: [] }, []).some((i) => i.target === SWITCH_NAMESPACE));
  });

  it('lists namespaces with the current one first', () => {
    assert.deepStrictEqual(
      namespaceItems(['kube-system', 'payments', 'default', 'payments'], 'payments').map((i) => [i.namespace, i.description]),
      [
        ['payments', 'current'],
        ['default', undefined],
        ['kube-system', undefined],
      ],
    );
    assert.deepStrictEqual(namespaceItems(['b', 'a']).map((i) => i.namespace), ['a', 'b']);
  });
});
