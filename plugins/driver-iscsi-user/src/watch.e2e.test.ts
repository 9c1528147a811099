import { spawn } from 'node:child_process';
import { truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConnectionInfo, Device } from '@berth/core';
import { createHostServices, daemonStatus, processRuns, stopDaemon } from '@berth/host';
import { abortFuseConnection, FUSE_CONNECTIONS_DIR, fusectlMounted, storageDaemonPaths } from '@berth/qemu';
import { managedTgtdPaths } from '@berth/backend-tgt';
import { startTgtd, type TestTgtd } from '@berth/simhost/real';
import { exportRecords, userPaths } from './export-records.js';
import { mountpointOf } from './lun-plumbing.js';
import { call, createUserTestEnv, expectNothingLeft, type UserTestEnv } from './test-user-env.js';
import { exportNames } from './user-connection.js';
import { watcherFiles } from './watch-start.js';

// The dead-target watch against real targets: a LUN on a private tgtd (the harness's, so the test
// can SIGKILL or SIGSTOP it) and one on the env's tgtd (the tgt backend's, which stays alive), both
// through one qemu-storage-daemon. Small timeouts: noop 1 s, replacement 3 s (8 s for the SIGSTOP
// case, whose stop must stay under it on a loaded machine).

const MiB = 1024 * 1024;
const timings: string[] = [];
const tgtds: TestTgtd[] = [];
const envs: UserTestEnv[] = [];
/** Reads a test could not see end (a watch that failed): unblocked in afterAll by aborting their FUSE connection. */
const stuck: Array<{ env: UserTestEnv; key: string }> = [];

/** Whether fusectl was mounted before this suite (the watcher mounts it to abort a connection). */
let fusectlBefore = true;

afterAll(async () => {
  console.log(`\niscsi-user watch e2e timings\n${timings.join('\n')}`);
  for (const env of envs) console.log(`watch log of ${env.dataDir}:\n${(await env.host.fs.readFileIfExists(watcherFiles(userPaths(env.dataDir)).logFile)) ?? '(none)'}`);
  for (const { env, key } of stuck) await abortFuseConnection(env.host, mountpointOf(userPaths(env.dataDir), key), 5_000).catch(() => undefined);
  for (const env of envs) await stopDaemon(watcherFiles(userPaths(env.dataDir)).pidFile, { timeoutMs: 5_000 }).catch(() => undefined);
  for (const env of envs) await env.dispose().catch((e: unknown) => console.error(e));
  for (const tgtd of tgtds) await tgtd.stop().catch((e: unknown) => console.error(e));
  if (!fusectlBefore && (await fusectlMounted(host.fs))) await host.runner.run('umount', [FUSE_CONNECTIONS_DIR], { timeoutMs: 10_000, reject: false });
});

const host = createHostServices();

/** A private tgtd with one target (no CHAP, open to every initiator) whose LUN 1 is a 16 MiB file in `dir`. */
async function privateTarget(dir: string, name: string): Promise<{ tgtd: TestTgtd; connection: ConnectionInfo; iqn: string }> {
  const tgtd = await startTgtd(dir);
  tgtds.push(tgtd);
  const iqn = `iqn.2026-12.test.berth:watch-${name}`;
  const file = path.join(dir, `${name}.img`);
  await writeFile(file, '');
  await truncate(file, 16 * MiB);
  await tgtd.admin('--op', 'new', '--mode', 'target', '--tid', '1', '-T', iqn);
  await tgtd.admin('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', file);
  await tgtd.admin('--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL');
  return { tgtd, iqn, connection: { driver_volume_type: 'iscsi', data: { target_iqn: iqn, target_lun: 1, target_portal: tgtd.portal } } };
}

/** An O_DIRECT read of one 4 KiB block of `device` (`dd iflag=direct`), as a process of its own: how it ended, and when. */
function directRead(device: string, block = 0): { done: Promise<{ code: number | null; stderr: string; ms: number }>; pid: number | undefined } {
  const started = performance.now();
  const child = spawn('dd', [`if=${device}`, 'of=/dev/null', 'bs=4096', 'count=1', `skip=${block}`, 'iflag=direct', 'status=none'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => (stderr += chunk));
  const done = new Promise<{ code: number | null; stderr: string; ms: number }>((resolve) => child.once('close', (code) => resolve({ code, stderr, ms: performance.now() - started })));
  return { done, pid: child.pid };
}

/** `promise`'s value, or undefined when `ms` pass first (the deadline of a wait on an event). */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const result = await Promise.race([promise, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)))]);
  clearTimeout(timer);
  return result;
}

async function watcherPid(env: UserTestEnv): Promise<number | undefined> {
  const status = await daemonStatus(watcherFiles(userPaths(env.dataDir)).pidFile);
  return status.running ? status.pid : undefined;
}

/** Wait until the watcher's log holds a line matching `pattern` (it is written as things happen). */
async function logged(env: UserTestEnv, pattern: RegExp, timeoutMs: number): Promise<string> {
  const log = watcherFiles(userPaths(env.dataDir)).logFile;
  return env.host.waiter.waitUntil(path.dirname(log), async () => (await env.host.fs.readFileIfExists(log))?.split('\n').find((line) => pattern.test(line)), { timeoutMs, what: `${pattern} in ${log}` });
}

/** A LUN of a private target connected (which starts the watcher), then the watcher SIGKILLed and gone. */
async function connectedThenWatcherKilled(env: UserTestEnv, name: string) {
  const target = await privateTarget(env.dataDir, name);
  const device = await env.driver.connect(target.connection, call());
  const before = await watcherPid(env);
  expect(before).toBeDefined();
  process.kill(before!, 'SIGKILL');
  await env.host.waiter.waitUntil('/proc', async () => ((await watcherPid(env)) === undefined ? true : undefined), { timeoutMs: 10_000, what: 'the watcher to die' });
  return { target, device, before };
}

/** Disconnect the test's LUN: nothing is left, and the watcher `pid` exits by itself at its next round. */
async function disconnectedThenWatcherGone(env: UserTestEnv, connection: ConnectionInfo, device: Device, pid: number): Promise<void> {
  await env.driver.disconnect(connection, device, { ...call(), force: false });
  await expectNothingLeft(env);
  await env.host.waiter.waitUntil('/proc', async () => ((await processRuns(pid, undefined)) ? undefined : true), { timeoutMs: 10_000, what: 'the watcher to exit' });
}

/** The driver's upkeep, as `berth serve` and `berth agent` run it every `upkeep.intervalMs`. */
async function upkeep(env: UserTestEnv): Promise<number> {
  if (!env.driver.upkeep) throw new Error('the driver has no upkeep()');
  const started = performance.now();
  await env.driver.upkeep(AbortSignal.timeout(30_000));
  return performance.now() - started;
}

beforeAll(async () => {
  fusectlBefore = await fusectlMounted(host.fs);
  envs.push(await createUserTestEnv({ noopIntervalS: 1, replacementTimeoutS: 3 }));
  envs.push(await createUserTestEnv({ noopIntervalS: 1, replacementTimeoutS: 8 }));
});

describe('the iscsi-user watch of dead targets', () => {
  it('a SIGKILLed target whose LUN is the only one the daemon serves: a direct read fails with EIO soon after replacementTimeoutS, the record is failed and reported, a disconnect leaves nothing', async () => {
    const env = envs[0]!;
    // On the tgt backend's own tgtd: its next command starts it again with its targets, as berth
    // serve's upkeep would.
    const deadVolume = await env.makeVolume(16 * MiB);
    const dead = { connection: deadVolume.connection, iqn: String(deadVolume.connection.data.target_iqn), portal: String(deadVolume.connection.data.target_portal) };
    const deadDevice: Device = await env.driver.connect(dead.connection, call());
    const watcher = await watcherPid(env);
    expect(watcher).toBeDefined();
    const key = exportNames(dead.iqn, Number(deadVolume.connection.data.target_lun)).key;
    const tgtdPid = (await daemonStatus(managedTgtdPaths(env.dataDir).pidFile)).pid;
    expect(tgtdPid).toBeDefined();

    process.kill(tgtdPid!, 'SIGKILL');
    await env.host.waiter.waitUntil('/proc', async () => ((await processRuns(tgtdPid!, undefined)) ? undefined : true), { timeoutMs: 10_000, what: 'tgtd to die' });
    const read = directRead(deadDevice.path, 7);
    const ended = await within(read.done, 30_000);
    if (ended === undefined) stuck.push({ env, key });
    expect(ended, 'the read on the dead target did not end within 30 s').toBeDefined();
    timings.push(`direct read on a SIGKILLed target (noop 1 s, replacement 3 s): failed after ${Math.round(ended!.ms)} ms: ${ended!.stderr.trim()}`);
    expect(ended!.code).not.toBe(0);
    expect(ended!.stderr).toMatch(/Input\/output error/);
    expect(ended!.ms).toBeLessThan(15_000);
    // The record is marked right after the abort that ended the read (the log line follows the mark).
    await logged(env, /its LUN's I\/O was failed/, 10_000);

    const record = await exportRecords(userPaths(env.dataDir)).load(key);
    expect(record?.status).toBe('failed');
    expect(record?.failure).toMatch(new RegExp(`target ${dead.iqn.replaceAll('.', '\\.')} at ${dead.portal} did not answer for \\d+ s .*its I/O was failed \\(EIO\\)`));
    const check = await env.driver.check?.();
    if (!check) throw new Error('the driver has no check()');
    expect(check.ok).toBe(false);
    expect(check.summary).toContain(dead.iqn);
    expect((check.checks ?? []).map((c) => c.detail).join('\n')).toContain(`${dead.iqn} LUN 1: target ${dead.iqn}`);

    // The target comes back (the backend's next command restarts its tgtd); the failed LUN stays
    // failed until a detach (or reconcile) takes it away.
    await env.makeVolume(MiB);
    expect(await env.driver.connected!()).toEqual([]);
    // Forced: the daemon's restart after the abort released the dead LUN's loop device, and another
    // program on this shared machine may have taken the number since (identity-mismatch, which only
    // force passes; the transport then removes its own chain and leaves that device).
    await env.driver.disconnect(dead.connection, deadDevice, { ...call(), force: true });
    await expectNothingLeft(env);
    // With no daemon and no record, the watcher ends by itself at its next round.
    await env.host.waiter.waitUntil('/proc', async () => ((await processRuns(watcher!, undefined)) ? undefined : true), { timeoutMs: 10_000, what: 'the watcher to exit' });
  });

  it('a SIGKILLed target beside a LUN whose target answers: the dead LUN\'s I/O keeps waiting (failing it would take the daemon down under the healthy one, qemu 7.2), the healthy LUN reads on without one error, and the read completes once the target is back', async () => {
    const env = envs[0]!;
    const deadVolume = await env.makeVolume(16 * MiB);
    const dead = { connection: deadVolume.connection, iqn: String(deadVolume.connection.data.target_iqn) };
    const alive = await privateTarget(env.dataDir, 'alive');
    const deadDevice: Device = await env.driver.connect(dead.connection, call());
    const aliveDevice: Device = await env.driver.connect(alive.connection, call());
    const key = exportNames(dead.iqn, Number(deadVolume.connection.data.target_lun)).key;
    const tgtdPid = (await daemonStatus(managedTgtdPaths(env.dataDir).pidFile)).pid;
    process.kill(tgtdPid!, 'SIGKILL');
    await env.host.waiter.waitUntil('/proc', async () => ((await processRuns(tgtdPid!, undefined)) ? undefined : true), { timeoutMs: 10_000, what: 'tgtd to die' });
    const read = directRead(deadDevice.path, 11);
    // Past replacementTimeoutS the watcher says it leaves the dead LUN waiting, and why.
    await logged(env, /keep their I\/O waiting/, 20_000);
    expect(await within(read.done, 500), 'the read on the dead target ended: its export was failed beside a healthy one').toBeUndefined();
    expect((await exportRecords(userPaths(env.dataDir)).load(key))?.status).toBe('active');
    // The healthy LUN, read over and over meanwhile: not one error.
    const results = [];
    for (let block = 20; block < 30; block += 1) results.push(await within(directRead(aliveDevice.path, block).done, 30_000));
    timings.push(`reads of the healthy LUN beside the dead one, past replacementTimeoutS: ${results.filter((r) => r?.code === 0).length} of ${results.length} fine`);
    expect(results.map((r) => r?.code)).toEqual(results.map(() => 0));
    // The target comes back (the backend's next command restarts its tgtd with its targets): the read
    // that waited completes, as the kernel's queued I/O does.
    await env.makeVolume(MiB);
    const ended = await within(read.done, 60_000);
    if (ended === undefined) stuck.push({ env, key });
    timings.push(`the read that waited on the dead target beside a healthy LUN: exit ${ended?.code} after ${Math.round(ended?.ms ?? -1)} ms (the target back)`);
    expect(ended?.code).toBe(0);
    await env.driver.disconnect(dead.connection, deadDevice, { ...call(), force: false });
    await env.driver.disconnect(alive.connection, aliveDevice, { ...call(), force: false });
    await expectNothingLeft(env);
  });

  it('a SIGSTOPped target resumed before replacementTimeoutS: a read started meanwhile completes, nothing is aborted', async () => {
    const env = envs[1]!;
    const paused = await privateTarget(env.dataDir, 'paused');
    const device = await env.driver.connect(paused.connection, call());
    const key = exportNames(paused.iqn, 1).key;
    await paused.tgtd.signal('SIGSTOP');
    const stoppedAt = performance.now();
    const read = directRead(device.path, 9);
    try {
      // The watcher has seen the silence (a ping went unanswered) before the target comes back.
      await logged(env, new RegExp(`"key":"${key}".*did not answer a ping`), 6_000);
    } finally {
      await paused.tgtd.signal('SIGCONT');
    }
    const stoppedMs = performance.now() - stoppedAt;
    const ended = await within(read.done, 30_000);
    if (ended === undefined) stuck.push({ env, key });
    timings.push(`direct read while the target was SIGSTOPped for ${Math.round(stoppedMs)} ms: exit ${ended?.code} after ${Math.round(ended?.ms ?? -1)} ms`);
    expect(stoppedMs).toBeLessThan(8_000);
    expect(ended?.code).toBe(0);
    await logged(env, new RegExp(`"key":"${key}".*answers again`), 10_000);
    expect((await exportRecords(userPaths(env.dataDir)).load(key))?.status).toBe('active');
    const log = (await env.host.fs.readFileIfExists(watcherFiles(userPaths(env.dataDir)).logFile)) ?? '';
    expect(log).not.toMatch(/I\/O was failed/);
    await env.driver.disconnect(paused.connection, device, { ...call(), force: false });
  });

  it('a killed watcher is reported by check() (berth doctor) while its LUN is connected, and started again by the next connect', async () => {
    const env = envs[1]!;
    const { target, device, before } = await connectedThenWatcherKilled(env, 'again');
    const unwatched = await env.driver.check!();
    expect(unwatched.ok).toBe(false);
    expect(unwatched.summary).toMatch(/the dead-target watcher is not running while 1 LUN\(s\) are connected/);
    const watch = (unwatched.checks ?? []).find((c) => c.name === 'dead-target watch');
    expect(watch?.ok).toBe(false);
    expect(watch?.detail).toContain(`${target.iqn} LUN 1`);
    expect(unwatched.fix).toMatch(/started again by the next iscsi-user attach/);
    // A connect of a LUN already connected (its chain whole) starts it too.
    await env.driver.connect(target.connection, call());
    const after = await watcherPid(env);
    expect(after).toBeDefined();
    expect(after).not.toBe(before);
    const watched = await env.driver.check!();
    expect((watched.checks ?? []).find((c) => c.name === 'dead-target watch')?.ok).toBe(true);
    expect(watched.ok).toBe(true);
    await disconnectedThenWatcherGone(env, target.connection, device, after!);
  });

  it('a killed watcher is started again by the driver\'s upkeep (berth serve, berth agent), not only at the next connect; a second round changes nothing', async () => {
    const env = envs[1]!;
    const { target, device, before } = await connectedThenWatcherKilled(env, 'upkept');
    const ms = await upkeep(env);
    const after = await watcherPid(env);
    timings.push(`upkeep with the watcher SIGKILLed and a LUN connected: a new watcher (pid ${after}) in ${Math.round(ms)} ms`);
    expect(after).toBeDefined();
    expect(after).not.toBe(before);
    // The new one watches the LUN (its first round's line), which stays connected as it was.
    await logged(env, new RegExp(`"pid":${after},.*watching the connected LUNs`), 10_000);
    expect((await env.driver.connected!()).map((c) => c.device.path)).toEqual([device.path]);
    const again = await upkeep(env);
    timings.push(`upkeep with the watcher running: ${Math.round(again)} ms`);
    expect(await watcherPid(env)).toBe(after);
    await disconnectedThenWatcherGone(env, target.connection, device, after!);
  });

  it('upkeep starts nothing with nothing attached (no watcher, no daemon), nor with LUNs recorded on a dead daemon (its restart is the next operation\'s)', async () => {
    const env = envs[1]!;
    await expectNothingLeft(env);
    const idle = await upkeep(env);
    timings.push(`upkeep with nothing attached: ${Math.round(idle)} ms`);
    expect(await watcherPid(env)).toBeUndefined();
    expect(await env.leftovers()).toEqual({ loops: [], mounts: [], daemon: false, records: [] });

    const { target, device, before } = await connectedThenWatcherKilled(env, 'deaddaemon');
    const qsd = await env.daemonPid();
    expect(qsd).toBeDefined();
    process.kill(qsd!, 'SIGKILL');
    await env.host.waiter.waitUntil('/proc', async () => ((await processRuns(qsd!, undefined)) ? undefined : true), { timeoutMs: 10_000, what: 'qemu-storage-daemon to die' });
    await upkeep(env);
    expect(await env.daemonPid()).toBeUndefined();
    expect(await watcherPid(env)).toBeUndefined();
    // The next operation restores the LUN on a new daemon and starts the watcher (as the restore test below shows).
    expect((await env.driver.connected!()).map((c) => c.device.path)).toEqual([device.path]);
    const after = await watcherPid(env);
    expect(after).toBeDefined();
    expect(after).not.toBe(before);
    await disconnectedThenWatcherGone(env, target.connection, device, after!);
  });

  it('a restore after the daemon died starts the watcher again: the rebuilt LUNs are watched at once, not at the next connect', async () => {
    const env = envs[1]!;
    const { target, device, before } = await connectedThenWatcherKilled(env, 'restored');
    // The daemon dies too (a reboot is both): the next operation of the transport restores the LUN.
    const qsd = (await daemonStatus(storageDaemonPaths(userPaths(env.dataDir).daemon).pidFile)).pid;
    process.kill(qsd!, 'SIGKILL');
    await env.host.waiter.waitUntil('/proc', async () => ((await processRuns(qsd!, undefined)) ? undefined : true), { timeoutMs: 10_000, what: 'qemu-storage-daemon to die' });
    expect((await env.driver.connected!()).map((c) => c.device.path)).toEqual([device.path]);
    const after = await watcherPid(env);
    expect(after).toBeDefined();
    expect(after).not.toBe(before);
    await disconnectedThenWatcherGone(env, target.connection, device, after!);
  });
});
