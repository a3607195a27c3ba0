import * as assert from 'assert';
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

  it('recognises the daemon\'s "no target" error', () => {
    assert.ok(isNoTargetError('no target: choose one (mirrord/listTargets) or set "target" in the configuration'));
    assert.ok(!isNoTargetError('mirrord could not start a session on pid/1: no such process'));
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
