// Follows a growing log file (mirrord-server's) and hands each complete new line to `append`.

import * as fs from 'fs';

export class LogTail {
  private offset = 0;
  private partial = '';
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly file: string,
    private readonly append: (line: string) => void,
  ) {}

  /** Starts following from the current end of the file (earlier content is not shown). */
  start(intervalMs = 300): void {
    this.stop();
    try {
      this.offset = fs.statSync(this.file).size;
    } catch {
      this.offset = 0;
    }
    this.partial = '';
    this.timer = setInterval(() => this.poll(), intervalMs);
    this.timer.unref?.();
  }

  /** Reads what was appended since the last poll. */
  poll(): void {
    let size: number;
    try {
      size = fs.statSync(this.file).size;
    } catch {
      return;
    }
    if (size < this.offset) {
      // Truncated or replaced: start over.
      this.offset = 0;
      this.partial = '';
    }
    if (size === this.offset) {
      return;
    }
    const fd = fs.openSync(this.file, 'r');
    try {
      const len = Math.min(size - this.offset, 4 * 1024 * 1024);
      const buf = Buffer.alloc(len);
      const n = fs.readSync(fd, buf, 0, len, this.offset);
      this.offset += n;
      const text = this.partial + buf.subarray(0, n).toString('utf8');
      const lines = text.split('\n');
      this.partial = lines.pop() ?? '';
      for (const l of lines) {
        this.append(l);
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Stops following; a last poll shows what the process wrote before it ended. */
  stop(): void {
    if (this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
      this.poll();
      if (this.partial) {
        this.append(this.partial);
        this.partial = '';
      }
    }
  }
}
