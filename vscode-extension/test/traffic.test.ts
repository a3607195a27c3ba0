import * as assert from 'assert';
import { TrafficEvent } from '../src/logic/api';
import { escapeHtml, eventToRow, formatTime, matchesFilter, rowHtml, toWire, TrafficStore } from '../src/logic/traffic';

const T = Date.UTC(2025, 0, 2, 3, 4, 5, 67);

const request: TrafficEvent = {
  type: 'incoming_request',
  time: T,
  port: 80,
  method: 'GET',
  path: '/api/users?id=1',
  headers: { 'x-mirrord-user': 'alice', host: '10.244.0.10', 'user-agent': 'curl/7.88.1' },
  status: 200,
  duration_ms: 12,
  mode: 'steal',
  matched_filter: 'header: x-mirrord-user: alice',
};

describe('traffic rows', () => {
  it('an incoming request shows method, path, status, mode, matched filter, time and duration', () => {
    const row = eventToRow('sess-1234567890', request, 7);
    assert.strictEqual(row.id, 7);
    assert.strictEqual(row.kind, 'incoming');
    assert.strictEqual(row.type, 'HTTP in');
    assert.strictEqual(row.summary, 'GET /api/users?id=1');
    assert.strictEqual(row.status, '200');
    assert.strictEqual(row.mode, 'steal');
    assert.strictEqual(row.filter, 'header: x-mirrord-user: alice');
    assert.strictEqual(row.duration, '12 ms');
    assert.strictEqual(row.timeText, formatTime(T));
    assert.match(row.timeText, /^\d\d:\d\d:\d\d\.067$/);
    assert.strictEqual(row.failed, false);
    // headers (sorted) are the details a click shows
    assert.deepStrictEqual(row.details, [
      ['port', '80'],
      ['host', '10.244.0.10'],
      ['user-agent', 'curl/7.88.1'],
      ['x-mirrord-user', 'alice'],
    ]);
  });

  it('a failed or 5xx request is marked failed', () => {
    const failed = eventToRow('s', { ...request, status: 0 } as TrafficEvent, 1);
    assert.strictEqual(failed.status, 'failed');
    assert.ok(failed.failed);
    assert.ok(eventToRow('s', { ...request, status: 502 } as TrafficEvent, 1).failed);
    const mirrored = eventToRow('s', { ...request, mode: 'mirror', matched_filter: undefined } as TrafficEvent, 1);
    assert.strictEqual(mirrored.mode, 'mirror');
    assert.strictEqual(mirrored.filter, '');
  });

  it('outgoing connections show the name looked up, the address and errors', () => {
    const ok = eventToRow('s', { type: 'outgoing_connection', time: T, host: 'payment-service', address: '10.96.0.50', port: 8080, protocol: 'tcp' }, 1);
    assert.strictEqual(ok.type, 'TCP out');
    assert.strictEqual(ok.summary, 'payment-service:8080 (10.96.0.50)');
    assert.strictEqual(ok.status, 'ok');
    const refused = eventToRow('s', { type: 'outgoing_connection', time: T, address: '10.96.0.50', port: 8081, protocol: 'udp', error: 'connection refused' }, 2);
    assert.strictEqual(refused.type, 'UDP out');
    assert.strictEqual(refused.summary, '10.96.0.50:8081');
    assert.strictEqual(refused.status, 'connection refused');
    assert.ok(refused.failed);
  });

  it('DNS queries show the name, answers and duration', () => {
    const row = eventToRow('s', { type: 'dns_query', time: T, name: 'payment-service', answers: ['10.96.0.50'], duration_ms: 3 }, 1);
    assert.strictEqual(row.kind, 'dns');
    assert.strictEqual(row.summary, 'payment-service → 10.96.0.50');
    assert.strictEqual(row.status, '1 answer');
    assert.strictEqual(row.duration, '3 ms');
    const nx = eventToRow('s', { type: 'dns_query', time: T, name: 'nope', answers: [], duration_ms: 1, error: 'no such host' }, 2);
    assert.strictEqual(nx.summary, 'nope');
    assert.strictEqual(nx.status, 'no such host');
    assert.ok(nx.failed);
  });

  it('other events: connections, ports, processes, errors, unknown types', () => {
    assert.strictEqual(eventToRow('s', { type: 'incoming_connection', time: T, peer: '10.244.0.20:5000', port: 80, mode: 'mirror' }, 1).summary, '10.244.0.20:5000 → :80');
    assert.strictEqual(eventToRow('s', { type: 'port_subscription', time: T, port: 80, mode: 'steal', active: false }, 1).summary, ':80 released');
    assert.strictEqual(eventToRow('s', { type: 'process_connected', time: T, pid: 5, executable: 'node' }, 1).summary, 'node (pid 5) joined');
    const err = eventToRow('s', { type: 'error', time: T, message: 'the agent exited' }, 1);
    assert.strictEqual(err.kind, 'error');
    assert.ok(err.failed);
    const unknown = eventToRow('s', { type: 'future_thing', time: T, x: 1 } as unknown as TrafficEvent, 1);
    assert.strictEqual(unknown.kind, 'other');
    assert.strictEqual(unknown.type, 'future_thing');
  });

  it('renders a row and its hidden header details as escaped HTML', () => {
    const evil: TrafficEvent = { ...request, path: '/<script>alert(1)</script>', headers: { 'x-"q"': '<b>&' } } as TrafficEvent;
    const html = rowHtml(eventToRow('s1', evil, 3));
    assert.ok(!html.includes('<script>'));
    assert.ok(html.includes('GET /&lt;script&gt;alert(1)&lt;/script&gt;'));
    assert.ok(html.includes('<th>x-&quot;q&quot;</th><td>&lt;b&gt;&amp;</td>'));
    assert.match(html, /^<tr class="row kind-incoming" data-id="3" data-session="s1" tabindex="0">/);
    assert.match(html, /<tr class="details" data-for="3" hidden>/);
    for (const cell of ['200', 'steal', 'header: x-mirrord-user: alice', '12 ms']) {
      assert.ok(html.includes(`>${escapeHtml(cell)}</td>`), cell);
    }
  });

  it('the filter matches every term, case-insensitively, in any column or header, and by session', () => {
    const row = eventToRow('sess-a', request, 1);
    assert.ok(matchesFilter(row, ''));
    assert.ok(matchesFilter(row, 'get /API'));
    assert.ok(matchesFilter(row, 'steal alice'));
    assert.ok(!matchesFilter(row, 'post'));
    assert.ok(matchesFilter(row, 'get', 'sess-a'));
    assert.ok(!matchesFilter(row, 'get', 'sess-b'));
    assert.strictEqual(toWire(row).html, rowHtml(row));
  });
});

describe('traffic store', () => {
  it('keeps the last N rows with increasing ids', () => {
    const store = new TrafficStore(2);
    store.add('s', request);
    store.add('s', { ...request, path: '/2' } as TrafficEvent);
    store.add('s', { ...request, path: '/3' } as TrafficEvent);
    assert.deepStrictEqual(store.all().map((r) => [r.id, r.summary]), [[2, 'GET /2'], [3, 'GET /3']]);
    store.clear();
    assert.strictEqual(store.all().length, 0);
  });

  it('adds history without duplicating events already received live', () => {
    const store = new TrafficStore();
    store.add('s', request);
    const earlier = { ...request, time: T - 1000, path: '/early' } as TrafficEvent;
    const added = store.addHistory('s', [earlier, request]);
    assert.strictEqual(added.length, 1);
    assert.deepStrictEqual(store.all().map((r) => r.summary), ['GET /early', 'GET /api/users?id=1']);
  });
});
