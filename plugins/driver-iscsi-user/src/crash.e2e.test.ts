import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Device } from '@berth/core';
import { createUserTestEnv, readAt, writeAt, type TestVolume, type UserTestEnv } from './test-user-env.js';

// Crash safety between the transport's commands: a real child process (test-crash-child.mjs, on
// dist/) is SIGKILLed at each fault point of connect and disconnect, holding the daemon lock and a
// QMP connection. A fresh driver (a restarted berth) then finishes the job either way — connect
// again (a working device with the bytes) or disconnect (nothing left: no loop device, FUSE mount,
// export or daemon) — and the bytes written before the crash are in tgtd's LUN file.

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'test-crash-child.mjs');
const CONNECT_POINTS = ['iscsi-user.daemon.after-start', 'iscsi-user.connect.after-login', 'iscsi-user.connect.after-export', 'iscsi-user.connect.after-losetup'];
const DISCONNECT_POINTS = ['iscsi-user.disconnect.after-flush', 'iscsi-user.disconnect.after-losetup', 'iscsi-user.disconnect.after-export'];
const MiB = 1024 * 1024;
const table: string[] = [];
let env: UserTestEnv;
let volume: TestVolume;
const marker = randomBytes(64 * 1024);

beforeAll(async () => {
  env = await createUserTestEnv();
  volume = await env.makeVolume(8 * MiB);
  const device = await env.driver.connect(volume.connection, { signal: AbortSignal.timeout(60_000) });
  writeAt(device.path, marker, 3 * MiB);
  await env.driver.disconnect(volume.connection, device, { force: false, signal: AbortSignal.timeout(60_000) });
});

afterAll(async () => {
  console.log(`\niscsi-user crash point                  child    then         left after\n${table.join('\n')}`);
  await env?.dispose();
});

function runChild(command: 'connect' | 'disconnect', point: string, device?: Device): string {
  const result = spawnSync(process.execPath, [CHILD, env.dataDir, command, JSON.stringify(volume.connection), ...(device ? [JSON.stringify(device)] : [])], {
    env: { ...process.env, FAULT: point },
    encoding: 'utf8',
    timeout: 90_000,
  });
  return result.signal === 'SIGKILL' ? 'killed' : result.stdout.trim() || result.stderr.trim();
}

const call = (): { signal: AbortSignal } => ({ signal: AbortSignal.timeout(60_000) });

async function left(): Promise<string> {
  const l = await env.leftovers();
  return [l.loops.length ? `${l.loops.length} loop` : '', l.mounts.length ? `${l.mounts.length} mount` : '', l.daemon ? 'daemon' : '', l.records.length ? `${l.records.length} record` : '']
    .filter(Boolean)
    .join(', ') || 'nothing';
}

describe('iscsi-user fault points, crashed in a real child process', () => {
  it.each(CONNECT_POINTS.flatMap((point) => [[point, 'connect again'] as const, [point, 'undo'] as const]))('connect crashed at %s, then %s', async (point, then) => {
    expect(runChild('connect', point)).toBe('killed');
    const driver = env.driverWith();
    if (then === 'connect again') {
      const device = await driver.connect(volume.connection, call());
      expect(readAt(device.path, marker.length, 3 * MiB).equals(marker)).toBe(true);
      expect((await driver.connected!()).map((c) => c.device.path)).toEqual([device.path]);
      await driver.disconnect(volume.connection, device, { force: false, ...call() });
    } else {
      // What the attach pipeline's undo does after a crash: disconnect, device unknown, forced.
      await driver.disconnect(volume.connection, undefined, { force: true, ...call() });
    }
    table.push(`${point.padEnd(40)} killed   ${then.padEnd(12)} ${await left()}`);
    expect(await env.leftovers()).toEqual({ loops: [], mounts: [], daemon: false, records: [] });
    expect(readAt(volume.lunFile, marker.length, 3 * MiB).equals(marker)).toBe(true);
  });

  it.each(DISCONNECT_POINTS)('disconnect crashed at %s, then disconnect again', async (point) => {
    const device = await env.driver.connect(volume.connection, call());
    const more = randomBytes(4096);
    writeAt(device.path, more, 5 * MiB);
    expect(runChild('disconnect', point, device)).toBe('killed');
    // Once the child detached the loop device, another test on this machine may take its number:
    // then the retry leaves that device alone, removes its own chain and says so (identity-mismatch).
    const retried = await env
      .driverWith()
      .disconnect(volume.connection, device, { force: false, ...call() })
      .then(
        () => 'done',
        (error: unknown) => (error as { details?: { reason?: string } }).details?.reason ?? String(error),
      );
    expect(['done', 'identity-mismatch']).toContain(retried);
    table.push(`${point.padEnd(40)} killed   ${'disconnect'.padEnd(12)} ${await left()}`);
    expect(await env.leftovers()).toEqual({ loops: [], mounts: [], daemon: false, records: [] });
    expect(readAt(volume.lunFile, more.length, 5 * MiB).equals(more)).toBe(true);
    expect(readAt(volume.lunFile, marker.length, 3 * MiB).equals(marker)).toBe(true);
  });

  it('passes every point on the way (an armed injector lists them)', async () => {
    const { FaultInjector } = await import('@berth/core');
    const watching = new FaultInjector({ 'nothing.armed.here': 'throw' });
    const driver = env.driverWith({}, watching);
    const device = await driver.connect(volume.connection, call());
    await driver.disconnect(volume.connection, device, { force: false, ...call() });
    expect([...watching.seen].sort()).toEqual([...CONNECT_POINTS, ...DISCONNECT_POINTS].sort());
  });
});
