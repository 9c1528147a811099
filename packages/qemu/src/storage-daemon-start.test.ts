import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { createHostServices, daemonStatus, stopDaemon } from '@berth/host';
import { StorageDaemon } from './storage-daemon.js';

// StorageDaemon.start() against a stand-in daemon that plays qemu 7.2's start-up race (a Node
// script on a Unix socket, no QEMU): the throwaway first connection absorbs a second greeting or
// a first client left unanswered; a monitor that never answers, or a cancel, ends the start
// cleanly and the stand-in is killed. Each connection the stand-in takes is counted in a file.

const host = createHostServices();
let dir: string;

/** The stand-in: `mode` says what its first connection gets; later ones are answered normally. */
async function standIn(mode: 'double-greeting' | 'silent-first' | 'silent' | 'garbled-second'): Promise<string> {
  // Named `node` and run by node through its #! line: /proc/<pid>/cmdline's argv[0] is node from
  // the first instant, and its name is the executable's, as the pid-file check wants.
  await mkdir(path.join(dir, 'bin'));
  const file = path.join(dir, 'bin', 'node');
  await writeFile(
    file,
    `#!${process.execPath}
const net = require('node:net');
const fs = require('node:fs');
const spec = process.argv[process.argv.indexOf('--chardev') + 1];
const socket = /path=([^,]+)/.exec(spec)[1];
const greeting = JSON.stringify({ QMP: { version: { qemu: { micro: 22, minor: 2, major: 7 }, package: 'stand-in' }, capabilities: ['oob'] } });
let connections = 0;
net.createServer((client) => {
  connections += 1;
  fs.writeFileSync(${JSON.stringify(path.join(dir, 'connections'))}, String(connections));
  const mode = ${JSON.stringify(mode)};
  const silent = mode === 'silent' || (mode === 'silent-first' && connections === 1);
  client.write(greeting + '\\r\\n');
  if (mode === 'double-greeting' && connections === 1) client.write(greeting + '\\r\\n');
  let buffer = '';
  client.on('error', () => undefined);
  client.on('data', (chunk) => {
    buffer += chunk;
    for (let nl = buffer.indexOf('\\n'); nl >= 0; nl = buffer.indexOf('\\n')) {
      const request = JSON.parse(buffer.slice(0, nl));
      buffer = buffer.slice(nl + 1);
      if (mode === 'garbled-second' && connections === 2) {
        // qemu 7.2's answer when two threads split a line between them: no id, a parse error.
        client.write(JSON.stringify({ error: { class: 'GenericError', desc: "JSON parse error, stray '_capa'" } }) + '\\r\\n');
        continue;
      }
      if (!silent) client.write(JSON.stringify({ return: {}, id: request.id }) + '\\r\\n');
    }
  });
}).listen(socket);
`,
  );
  await chmod(file, 0o755);
  return file;
}

async function connections(): Promise<number> {
  return Number(await readFile(path.join(dir, 'connections'), 'utf8').catch(() => '0'));
}

function daemonWith(binary: string, startTimeoutMs = 10_000): StorageDaemon {
  return new StorageDaemon({ dir: path.join(dir, 'qsd'), waiter: host.waiter, binary, startTimeoutMs });
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'berth-qsd-start-'));
});

afterEach(async () => {
  try {
    await stopDaemon(path.join(dir, 'qsd', 'qsd.pid'), { timeoutMs: 0, signal: 'SIGKILL' }).catch(() => undefined);
    // Whatever stand-in a failed test left, found by its command line (it names this test's dir).
    for (const pid of await readdir('/proc').catch(() => [] as string[])) {
      if (!/^\d+$/.test(pid)) continue;
      const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.includes(dir)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // gone already
        }
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

describe('StorageDaemon.start and qemu 7.2 start-up race', () => {
  it('a second greeting on the first connection: started, the next client is served', async () => {
    const daemon = daemonWith(await standIn('double-greeting'));
    await daemon.start();
    expect(await connections()).toBe(1);
    const qmp = await daemon.connect({ timeoutMs: 5_000 });
    qmp.close();
    expect(await connections()).toBe(2);
  });

  it('a first connection left unanswered is thrown away and another one tried', async () => {
    const daemon = daemonWith(await standIn('silent-first'));
    await daemon.start();
    expect(await connections()).toBe(2);
    const qmp = await daemon.connect({ timeoutMs: 5_000 });
    qmp.close();
  });

  it('a handshake garbled by the race (a JSON parse error for qmp_capabilities) is dropped and the client connects again', async () => {
    const daemon = daemonWith(await standIn('garbled-second'));
    await daemon.start();
    const qmp = await daemon.connect({ timeoutMs: 5_000 });
    qmp.close();
    expect(await connections()).toBe(3);
  });

  it('a monitor that never answers fails the start at its deadline, says so, and the daemon is stopped', async () => {
    const daemon = daemonWith(await standIn('silent'), 3_000);
    const error = await daemon.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(BerthError.is(error) && error.code).toBe('TIMEOUT');
    expect((error as BerthError).message).toMatch(/QMP monitor did not answer within 3000 ms/);
    expect((await daemonStatus(daemon.pidFile)).running).toBe(false);
  });

  it('a cancel during the settle ends the start at once, without a flood of attempts', async () => {
    const daemon = daemonWith(await standIn('silent'), 20_000);
    const controller = new AbortController();
    const started = daemon.start(controller.signal);
    await host.waiter.waitUntil(dir, async () => ((await connections()) >= 1 ? true : undefined), { timeoutMs: 10_000 });
    controller.abort(new BerthError('CANCELLED', 'stopped by the test'));
    const error = await started.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(BerthError.is(error) && error.code).toBe('CANCELLED');
    expect(await connections()).toBe(1);
    expect((await daemonStatus(daemon.pidFile)).running).toBe(false);
  });
});
