import * as assert from 'assert';
import { SessionConnections, statusLook } from '../src/logic/connection';

describe('session connections (sessionChanged reconnecting/ready → status bar)', () => {
  it('shows reconnecting while any session is, and the on/off look again once all resumed', () => {
    const c = new SessionConnections();
    assert.strictEqual(statusLook(true, c.count()).text, '$(pass-filled) mirrord');
    assert.strictEqual(c.update('a', 'reconnecting'), true);
    assert.strictEqual(c.update('b', 'reconnecting'), true);
    const look = statusLook(true, c.count());
    assert.strictEqual(look.text, '$(sync~spin) mirrord: reconnecting');
    assert.match(look.tooltip, /2 sessions lost/);
    assert.strictEqual(look.warning, true);
    assert.strictEqual(c.update('a', 'ready'), true);
    assert.match(statusLook(true, c.count()).tooltip, /a session lost/);
    // A session that never reconnects but fails for good leaves the reconnecting set too.
    assert.strictEqual(c.update('b', 'error'), true);
    assert.strictEqual(statusLook(true, c.count()).text, '$(pass-filled) mirrord');
    assert.strictEqual(statusLook(false, c.count()).text, '$(circle-large-outline) mirrord');
  });

  it('changes nothing for states that do not touch the connection', () => {
    const c = new SessionConnections();
    assert.strictEqual(c.update('a', 'starting'), false);
    assert.strictEqual(c.update('a', 'ready'), false);
    assert.strictEqual(c.update('a', 'stopped'), false);
    assert.strictEqual(c.count(), 0);
  });

  it('shows reconnecting even when mirrord was turned off meanwhile (the session still runs)', () => {
    const c = new SessionConnections();
    c.update('a', 'reconnecting');
    assert.strictEqual(statusLook(false, c.count()).text, '$(sync~spin) mirrord: reconnecting');
  });
});
