import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { lstat, rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Device } from '@berth/core';
import { createHostServices } from '@berth/host';
import { abortFuseConnection, FUSE_CONNECTIONS_DIR, fusectlMounted, fuseMountsUnder, loopInfo, removeFuseExport, StorageDaemon } from '@berth/qemu';
import { freePort } from '@berth/simhost/real';
import { exportRecords, userPaths } from './export-records.js';
import { placeholderOf, secretFile } from './lun-plumbing.js';
import { call, createUserTestEnv, expectNothingLeft, readAt, writeAt, type UserTestEnv } from './test-user-env.js';

// A dead FUSE mount at a mount point berth owns — what the watcher leaves when it aborts an
// export's FUSE connection and deletes the export from a daemon that still answers (tgtd killed,
// replacementTimeoutS passed): every lstat of the mount point answers ENOTCONN. A detach --force
// and a reconnect (what berth reconcile runs) of such a failed LUN must both go, and the mount with
// them. Here the watcher's two steps are run by hand on a real chain (no tgtd kill, no waiting out
// the timeout): `abortFuseConnection`, then `block-export-del`, then the record marked failed.

const MiB = 1024 * 1024;
let env: UserTestEnv;
/** Whether fusectl was mounted before this suite (the abort mounts it). */
let fusectlBefore = true;

beforeAll(async () => {
  fusectlBefore = await fusectlMounted(createHostServices().fs);
  // No watcher: this suite plays its part itself.
  env = await createUserTestEnv({ noopIntervalS: 0 });
});

afterAll(async () => {
  try {
    await env?.dispose();
  } finally {
    if (env && !fusectlBefore && (await fusectlMounted(env.host.fs))) await env.host.runner.run('umount', [FUSE_CONNECTIONS_DIR], { timeoutMs: 10_000, reject: false });
  }
});

/** What the watcher does to a LUN whose target stayed silent: abort its FUSE connection, delete its export, mark its record failed. */
async function killExportAsTheWatcherDoes(device: Device): Promise<string> {
  const mountpoint = String(device.identity?.['mountpoint']);
  const key = String(device.meta?.['key']);
  expect(await abortFuseConnection(env.host, mountpoint, 10_000)).toBeTypeOf('number');
  const paths = userPaths(env.dataDir);
  const qmp = await new StorageDaemon({ dir: paths.daemon, waiter: env.host.waiter }).connect({ timeoutMs: 10_000 });
  try {
    await removeFuseExport(qmp, String(device.identity?.['export']), { timeoutMs: 10_000 });
  } finally {
    qmp.close();
  }
  const records = exportRecords(paths);
  const record = await records.load(key);
  await records.save({ ...record!, status: 'failed', failure: 'the test aborted its export', updatedAt: new Date().toISOString() });
  return mountpoint;
}

/** Two LUNs connected, 4 KiB of random bytes written to the first at `offset`, and their export records. */
async function twoConnectedLuns(offset: number) {
  const a = await env.makeVolume(4 * MiB);
  const b = await env.makeVolume(4 * MiB);
  const da = await env.driver.connect(a.connection, call());
  const db = await env.driver.connect(b.connection, call());
  const bytes = randomBytes(4096);
  writeAt(da.path, bytes, offset);
  const paths = userPaths(env.dataDir);
  return { a, b, da, db, bytes, paths, records: exportRecords(paths) };
}

async function lstatCode(file: string): Promise<string | undefined> {
  return lstat(file).then(
    () => undefined,
    (error: unknown) => String((error as { code?: unknown }).code),
  );
}

describe('iscsi-user: a dead FUSE mount at its own mount point', () => {
  it('left by an aborted and deleted export: detach --force removes the LUN and the mount, a reconnect builds a new chain on the same loop device', async () => {
    const a = await env.makeVolume(4 * MiB);
    const b = await env.makeVolume(4 * MiB);
    const da = await env.driver.connect(a.connection, call());
    const db = await env.driver.connect(b.connection, call());
    const bytes = randomBytes(4096);
    writeAt(db.path, bytes, MiB);

    const mountA = await killExportAsTheWatcherDoes(da);
    const mountB = await killExportAsTheWatcherDoes(db);
    // The state the fault explorer found: both mounts dead, still listed.
    expect(await lstatCode(mountA)).toBe('ENOTCONN');
    expect(await lstatCode(mountB)).toBe('ENOTCONN');
    expect((await fuseMountsUnder(env.host.fs, mountA)).length).toBeGreaterThan(0);
    // Both loop devices are still bound to their dead files (I/O through them fails; the number is not free).
    expect((await loopInfo(env.host.fs, da.path))?.backingFile).toBe(mountA);
    expect((await loopInfo(env.host.fs, db.path))?.backingFile).toBe(mountB);

    // berth detach --force of A: goes (it failed with ENOTCONN on lstat before).
    await env.driver.disconnect(a.connection, da, { force: true, signal: AbortSignal.timeout(60_000) });
    expect(await fuseMountsUnder(env.host.fs, mountA)).toEqual([]);
    expect(await lstatCode(mountA)).toBe('ENOENT');
    expect((await loopInfo(env.host.fs, da.path))?.backingFile).not.toBe(mountA);

    // berth reconcile's reconnect of B: its leftovers go first, then a new chain on the same device.
    const again = await env.driver.connect(b.connection, call());
    expect(again.path).toBe(db.path);
    expect(readAt(again.path, 4096, MiB).equals(bytes)).toBe(true);
    expect((await fuseMountsUnder(env.host.fs, mountB)).length).toBe(1);

    await env.driver.disconnect(b.connection, again, { force: false, signal: AbortSignal.timeout(60_000) });
    await expectNothingLeft(env);
  }, 120_000);

  it('a restore that cannot rebuild a LUN (portal dead, CHAP secret gone) keeps its loop device bound to the dead FUSE file (I/O fails, the number is never free); reconcile\'s reconnect and detach --force then go', async () => {
    const { a, b, da, db, bytes, paths, records } = await twoConnectedLuns(2 * MiB);
    const keyA = String(da.meta?.['key']);
    const keyB = String(db.meta?.['key']);
    const mountA = String(da.identity?.['mountpoint']);
    const mountB = String(db.identity?.['mountpoint']);

    // A's recorded portal: a port nothing listens on (what a blocked portal looks like to the probe).
    const deadPortal = `127.0.0.1:${await freePort(['127.0.0.1'])}`;
    const recordA = await records.load(keyA);
    await records.save({ ...recordA!, portal: deadPortal });
    // B's CHAP password gone from this host.
    await rm(secretFile(paths, keyB));

    const pid = await env.daemonPid();
    process.kill(pid!, 'SIGKILL');
    await env.host.waiter.waitUntil('/proc', async () => ((await env.daemonPid()) === undefined ? true : undefined), { timeoutMs: 10_000 });
    // Any operation restarts the daemon and restores: neither LUN can be rebuilt.
    expect(await env.driver.connected?.()).toEqual([]);
    expect((await env.daemonPid()) ?? 0).not.toBe(pid);

    for (const [key, device, mountpoint, why] of [
      [keyA, da.path, mountA, /portal .* did not answer/],
      [keyB, db.path, mountB, /CHAP password is no longer on this host/],
    ] as const) {
      const record = await records.load(key);
      expect(record?.status).toBe('failed');
      expect(record?.failure).toMatch(why);
      expect(record?.failure).toMatch(/stays bound to its dead FUSE file/);
      // Still bound to the dead FUSE file: the number was never given back...
      expect((await loopInfo(env.host.fs, device))?.backingFile).toBe(mountpoint);
      expect(await lstatCode(mountpoint)).toBe('ENOTCONN');
      // ...and I/O through it fails instead of reaching anything.
      expect(() => execFileSync('dd', [`if=${device}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct', 'status=none'], { timeout: 10_000, stdio: 'pipe' })).toThrow();
    }

    // reconcile's reconnect of A (its connection names the live portal): on the same device, with its bytes.
    const again = await env.driver.connect(a.connection, call());
    expect(again.path).toBe(da.path);
    expect(readAt(again.path, 4096, 2 * MiB).equals(bytes)).toBe(true);
    // detach --force of B: its device, dead mount and record go.
    await env.driver.disconnect(b.connection, db, { force: true, signal: AbortSignal.timeout(60_000) });
    expect(await fuseMountsUnder(env.host.fs, mountB)).toEqual([]);
    expect((await loopInfo(env.host.fs, db.path))?.backingFile).not.toBe(mountB);

    await env.driver.disconnect(a.connection, again, { force: false, signal: AbortSignal.timeout(60_000) });
    await expectNothingLeft(env);
  }, 120_000);

  it('a restore whose rebuild fails after the release (the login refused): the loop number is bound to an empty read-only placeholder, never free; reconnect and detach release it', async () => {
    const { a, b, da, db, bytes, paths, records } = await twoConnectedLuns(MiB);
    const keys = [String(da.meta?.['key']), String(db.meta?.['key'])];
    // Both records name a CHAP user the target does not know: the portal answers, the secret is
    // there, the device is released, and the login of the rebuild is refused.
    for (const key of keys) {
      const record = await records.load(key);
      await records.save({ ...record!, username: 'not-the-user' });
    }
    const pid = await env.daemonPid();
    process.kill(pid!, 'SIGKILL');
    await env.host.waiter.waitUntil('/proc', async () => ((await env.daemonPid()) === undefined ? true : undefined), { timeoutMs: 10_000 });
    expect(await env.driver.connected?.()).toEqual([]);

    for (const [key, device] of [
      [keys[0]!, da.path],
      [keys[1]!, db.path],
    ] as const) {
      const record = await records.load(key);
      expect(record?.status).toBe('failed');
      expect(record?.failure).toMatch(/rebuilding it on the restarted qemu-storage-daemon failed: .*placeholder/);
      expect((await loopInfo(env.host.fs, device))?.backingFile).toBe(placeholderOf(paths, key));
      // Writes through it are refused; it has no bytes to read.
      expect(() => execFileSync('dd', ['if=/dev/zero', `of=${device}`, 'bs=4096', 'count=1', 'oflag=direct', 'status=none'], { timeout: 10_000, stdio: 'pipe' })).toThrow();
      expect(execFileSync('blockdev', ['--getsize64', device], { encoding: 'utf8', timeout: 10_000 }).trim()).toBe('0');
    }

    // Reconnect of A (the connection's CHAP account): the placeholder goes, the chain is built on the same number, bytes intact.
    const again = await env.driver.connect(a.connection, call());
    expect(again.path).toBe(da.path);
    expect(readAt(again.path, 4096, MiB).equals(bytes)).toBe(true);
    // detach of B (not forced): the placeholder device and file go.
    await env.driver.disconnect(b.connection, db, { force: false, signal: AbortSignal.timeout(60_000) });
    expect((await loopInfo(env.host.fs, db.path))?.backingFile).not.toBe(placeholderOf(paths, keys[1]!));
    expect(await lstatCode(placeholderOf(paths, keys[1]!))).toBe('ENOENT');

    await env.driver.disconnect(a.connection, again, { force: false, signal: AbortSignal.timeout(60_000) });
    await expectNothingLeft(env);
  }, 120_000);
});
