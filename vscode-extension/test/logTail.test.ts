import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LogTail } from '../src/logic/logTail';

describe('log tail (daemon log → output channel)', () => {
  it('shows complete lines appended after start, and the rest on stop', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mirrord-logtail-'));
    const file = path.join(dir, 'server.log');
    fs.writeFileSync(file, 'old line\n');
    const got: string[] = [];
    const tail = new LogTail(file, (l) => got.push(l));
    tail.start(60_000);
    fs.appendFileSync(file, 'INFO one\nINFO tw');
    tail.poll();
    assert.deepStrictEqual(got, ['INFO one']);
    fs.appendFileSync(file, 'o\nlast');
    tail.poll();
    assert.deepStrictEqual(got, ['INFO one', 'INFO two']);
    tail.stop();
    assert.deepStrictEqual(got, ['INFO one', 'INFO two', 'last']);
    // truncation starts over
    const tail2 = new LogTail(file, (l) => got.push(l));
    tail2.start(60_000);
    fs.writeFileSync(file, 'new\n');
    tail2.poll();
    assert.strictEqual(got[got.length - 1], 'new');
    tail2.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
