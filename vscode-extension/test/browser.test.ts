import * as assert from 'assert';
import { SessionInfo } from '../src/logic/api';
import { browserOffers, headerText, NO_OFFER_MESSAGE, offerMessage } from '../src/logic/browser';

const session = (id: string, startedAt: number, extra: Partial<SessionInfo> = {}): SessionInfo => ({
  sessionId: id,
  target: `pid/${id}`,
  state: 'ready',
  ports: [80],
  processes: [],
  startedAt,
  ...extra,
});
const concrete = {
  link: 'chrome-extension://hmjmnnhpoalhfbhncjafhgmdgijcijjh/options.html#header=x-user&value=alice&filter=x-user%3A+alice',
  filter: 'x-user: alice',
  header: 'x-user',
  value: 'alice',
};
const pattern = { link: 'chrome-extension://hmjmnnhpoalhfbhncjafhgmdgijcijjh/options.html#filter=%5Ex-debug%3A+.*', filter: '^x-debug: .*' };

describe('debug from browser', () => {
  it('offers only live sessions with a header filter, newest first', () => {
    const offers = browserOffers([
      session('1', 10, { browser: concrete }),
      session('2', 30, { browser: pattern }),
      session('3', 20),
      session('4', 40, { browser: concrete, state: 'stopped' }),
      session('5', 50, { browser: concrete, state: 'error' }),
    ]);
    assert.deepStrictEqual(
      offers.map((o) => [o.sessionId, o.label, o.description]),
      [
        ['2', 'pid/2', 'a header matching ^x-debug: .*'],
        ['1', 'pid/1', 'x-user: alice'],
      ],
    );
    assert.strictEqual(offers[1].setup.link, concrete.link);
    assert.deepStrictEqual(browserOffers([session('3', 1)]), []);
  });

  it('says what the link does, with or without a concrete header', () => {
    assert.strictEqual(headerText(concrete), 'x-user: alice');
    assert.match(offerMessage(concrete), /add "x-user: alice"/);
    assert.match(offerMessage(pattern), /\^x-debug: \.\* names no single value/);
    assert.match(NO_OFFER_MESSAGE, /header_filter/);
  });
});
