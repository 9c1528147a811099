// A writer for failover.e2e.test.ts: writes `count` chunks of random bytes through a block device
// (O_DSYNC: every write reaches the target before the next), keeps what it wrote in `expected`,
// says `writing` on stderr after its 32nd write, and prints {writes, maxGapMs, maxGapAtMs, errors} as JSON. A write that fails is written again
// (as an application would), and counted.
import { randomBytes } from 'node:crypto';
import { closeSync, constants, openSync, writeSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

const [device, expected, offsetText, chunkText, countText] = process.argv.slice(2);
const offset = Number(offsetText);
const chunk = Number(chunkText);
const count = Number(countText);
const fd = openSync(device, constants.O_WRONLY | constants.O_DSYNC);
const copy = openSync(expected, 'w');
const start = performance.now();
let last = start;
let maxGapMs = 0;
let maxGapAtMs = 0;
let errors = 0;
for (let i = 0; i < count; i += 1) {
  const data = randomBytes(chunk);
  writeSync(copy, data, 0, chunk, i * chunk);
  for (;;) {
    try {
      writeSync(fd, data, 0, chunk, offset + i * chunk);
      break;
    } catch {
      errors += 1;
    }
  }
  const now = performance.now();
  if (now - last > maxGapMs) {
    maxGapMs = now - last;
    maxGapAtMs = last - start;
  }
  last = now;
  // The parent may wait for this line to act while writes are under way.
  if (i === 31) process.stderr.write('writing\n');
}
closeSync(fd);
closeSync(copy);
process.stdout.write(JSON.stringify({ writes: count, totalMs: Math.round(performance.now() - start), maxGapMs: Math.round(maxGapMs), maxGapAtMs: Math.round(maxGapAtMs), errors }));
