#!/usr/bin/env node
// qemu 7.2's QMP start-up race, shown (packages/qemu/README.md, "The first client of a new
// daemon"): start qemu-storage-daemon under `strace -f` (which widens the window between its main
// thread and its monitor I/O thread), connect as soon as the socket exists, and send three commands.
//   node scripts/start-race.mjs direct 300   # the first client sends them: ~1 start in 100 goes wrong
//   node scripts/start-race.mjs settle 300   # a throwaway client first, then the commands on a second
//   node scripts/start-race.mjs wait 300     # as StorageDaemon.start() does: wait=on, the first client is accepted before the monitor starts
// Prints each start that went wrong (a second greeting, a reply missing or garbled) and the count.
// Needs qemu-storage-daemon and strace (not root). Leaves nothing: its temp dir is removed.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { clearTimeout, setTimeout } from 'node:timers';

const mode = process.argv[2] ?? 'direct';
const starts = Number(process.argv[3] ?? 100);
if (!['direct', 'settle', 'wait'].includes(mode) || !Number.isInteger(starts) || starts < 1) {
  console.error('usage: node scripts/start-race.mjs direct|settle|wait [starts]');
  process.exit(2);
}
const dir = mkdtempSync(path.join(tmpdir(), 'berth-start-race-'));
const socket = path.join(dir, 'qmp.sock');
const commands = [
  { execute: 'qmp_capabilities', id: 'c1' },
  { execute: 'object-add', arguments: { 'qom-type': 'secret', id: 'secret-abcdefghijklmnop', data: 'x' }, id: 'c2' },
  { execute: 'query-version', id: 'c3' },
];

/** One client: wait for the greeting, send `sent`, collect lines until each has an answer (or 10 s pass). */
function session(sent) {
  return new Promise((resolve) => {
    const client = net.connect(socket);
    client.setEncoding('utf8');
    const lines = [];
    let buffer = '';
    let wrote = false;
    const done = (extra) => {
      clearTimeout(timer);
      client.destroy();
      resolve({ lines, ...extra });
    };
    const timer = setTimeout(() => done({ timeout: true }), 10_000);
    client.on('error', (error) => done({ error: error.code }));
    client.on('data', (chunk) => {
      buffer += chunk;
      for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
        lines.push(buffer.slice(0, nl).trim());
        buffer = buffer.slice(nl + 1);
      }
      if (!wrote && lines.length > 0) {
        wrote = true;
        client.write(sent.map((c) => `${JSON.stringify(c)}\n`).join(''));
      }
      if (lines.length >= 1 + sent.length) done({});
    });
  });
}

async function untilAccepted(sent) {
  for (;;) {
    const result = await session(sent);
    if (result.error !== 'ECONNREFUSED' && result.error !== 'ENOENT') return result;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

let wrong = 0;
try {
  for (let i = 0; i < starts; i += 1) {
    rmSync(socket, { force: true });
    // Its own process group: killing strace alone would leave the daemon it traces running.
    const daemon = spawn('strace', ['-f', '-o', '/dev/null', 'qemu-storage-daemon', '--chardev', `socket,id=qmp0,path=${socket},server=on,wait=${mode === 'wait' ? 'on' : 'off'}`, '--monitor', 'chardev=qmp0,mode=control'], { stdio: 'ignore', detached: true });
    const exited = new Promise((resolve) => daemon.once('exit', resolve));
    try {
      while (!existsSync(socket)) await new Promise((resolve) => setTimeout(resolve, 1));
      // As settleMonitor does: throwaway clients until one is answered as it should be.
      for (let attempt = 0; mode === 'settle' && attempt < 5; attempt += 1) {
        const throwaway = await untilAccepted([{ execute: 'qmp_capabilities', id: 'throwaway' }]);
        if (throwaway.lines.length === 2 && throwaway.lines[1].includes('"return"')) break;
      }
      // wait=on: the first client and the one after it must both be served cleanly.
      const results = mode === 'settle' ? [await session(commands)] : [await untilAccepted(commands)];
      if (mode === 'wait') results.push(await session(commands.map((c) => (c.execute === 'object-add' ? { ...c, arguments: { ...c.arguments, id: 'secret-second' } } : c))));
      const bad = results.find((result) => !(result.lines.length === 1 + commands.length && result.lines.slice(1).every((line) => line.includes('"return"'))));
      if (bad) {
        wrong += 1;
        console.log(`start ${i + 1}: ${JSON.stringify(bad).slice(0, 300)}`);
      }
    } finally {
      process.kill(-daemon.pid, 'SIGKILL');
      await exited;
      // The group's last member (the daemon) may outlive strace by a moment.
      for (let tries = 0; tries < 1000; tries += 1) {
        try {
          process.kill(-daemon.pid, 0);
        } catch {
          break;
        }
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
console.log(`${mode}: ${wrong} of ${starts} starts went wrong`);
