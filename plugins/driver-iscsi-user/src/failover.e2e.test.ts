import { randomBytes, randomUUID } from 'node:crypto';
import { execFile, spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BerthError, silentLogger, type BackendVolume, type ConnectionInfo, type Device, type VolumeBackend } from '@berth/core';
import { acceptsConnection, createHostServices, daemonStatus, startDaemon, stopDaemon, type HostServices } from '@berth/host';
import { createTgtBackend } from '@berth/backend-tgt';
import { StorageDaemon, unmountFuseUnder } from '@berth/qemu';
import { freeControlPort } from '@berth/simhost/real';
import { userPaths } from './export-records.js';
import { createIscsiUserDriver, type IscsiUserDriver } from './iscsi-user-driver.js';
import { loopsUnder, readAt, writeAt } from './test-user-env.js';

// Portal failover with a real fault. tgtd runs in a network namespace of its own and listens on
// two addresses, each reached from the host through its own veth pair (private addresses this
// file makes and deletes); qemu-storage-daemon stays in the host's namespaces (its FUSE mount
// must be the host's). Taking one pair's namespace end down makes that portal unreachable the
// way a dead storage path is: packets vanish, nothing answers, no reset.

const WRITER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'test-writer-child.mjs');
const CRASH_CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'test-crash-child.mjs');
const FAILOVER_POINTS = ['iscsi-user.failover.after-login', 'iscsi-user.failover.after-repoint'];
const MiB = 1024 * 1024;
const CHUNK = 64 * 1024;
const suffix = randomBytes(3).toString('hex');
const netns = `berth-fo-${suffix}`;
// A /30 per portal on a 10.213.x.0/24 no interface of this host uses.
let subnet = '';
const portalA = (): string => `${subnet}.2:3260`;
const portalB = (): string => `${subnet}.6:3260`;
const report: string[] = [];

let host: HostServices;
let dataDir = '';
let controlPort = 0;
let backend: VolumeBackend;
let driver: IscsiUserDriver;
const made: BackendVolume[] = [];

async function run(file: string, args: string[]): Promise<string> {
  return (await host.runner.run(file, args, { timeoutMs: 20_000 })).stdout;
}

/** Cut (`down`) or restore (`up`) the path to portal A. */
async function pathA(state: 'down' | 'up'): Promise<void> {
  await run('ip', ['-n', netns, 'link', 'set', 'p0', state]);
  if (state === 'down') return;
  // A link just set up does not carry traffic at once: the next connect would find A dead and take B.
  const [address, port] = portalA().split(':') as [string, string];
  await host.waiter.waitUntil('/', async () => ((await acceptsConnection(address, Number(port))) ? true : undefined), { timeoutMs: 20_000 });
}

/** Drop (`on`) or let through (`off`) what reaches portal A inside the namespace: nothing answers, nothing is refused. */
async function blackholeA(state: 'on' | 'off'): Promise<void> {
  const [address, port] = portalA().split(':') as [string, string];
  const rule = ['INPUT', '-d', address, '-p', 'tcp', '--dport', port, '-j', 'DROP'];
  await run('ip', ['netns', 'exec', netns, 'iptables', state === 'on' ? '-I' : '-D', ...rule]);
}

beforeAll(async () => {
  host = createHostServices();
  dataDir = await realpath(await mkdtemp(path.join(os.tmpdir(), 'berth-iu-fo-')));
  const used = await run('ip', ['-4', '-o', 'addr', 'show']);
  for (let tries = 0; subnet === '' || used.includes(`${subnet}.`); tries += 1) {
    if (tries > 50) throw new Error('no free 10.213.x.0/24 here');
    subnet = `10.213.${Math.floor(Math.random() * 256)}`;
  }
  await run('ip', ['netns', 'add', netns]);
  await run('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
  for (const [i, root] of [`bfa${suffix}`, `bfb${suffix}`].entries()) {
    await run('ip', ['link', 'add', root, 'type', 'veth', 'peer', 'name', `p${i}`, 'netns', netns]);
    await run('ip', ['addr', 'add', `${subnet}.${i * 4 + 1}/30`, 'dev', root]);
    await run('ip', ['-n', netns, 'addr', 'add', `${subnet}.${i * 4 + 2}/30`, 'dev', `p${i}`]);
    await run('ip', ['link', 'set', root, 'up']);
    await run('ip', ['-n', netns, 'link', 'set', `p${i}`, 'up']);
  }
  // tgtd in the namespace (only its network: its control socket under /run/tgtd stays reachable).
  controlPort = await freeControlPort();
  await startDaemon({
    file: 'nsenter',
    args: [`--net=/run/netns/${netns}`, 'tgtd', '-f', '-C', String(controlPort), '--iscsi', `portal=${portalA()}`],
    pidFile: path.join(dataDir, 'tgtd.pid'),
    logFile: path.join(dataDir, 'tgtd.log'),
  });
  await host.waiter.waitUntil('/run/tgtd', async () => ((await host.runner.run('tgtadm', ['-C', String(controlPort), '--op', 'show', '--mode', 'sys'], { timeoutMs: 3_000, reject: false })).exitCode === 0 ? true : undefined), {
    timeoutMs: 15_000,
    what: 'tgtd in the namespace to answer',
  });
  await run('tgtadm', ['-C', String(controlPort), '--lld', 'iscsi', '--op', 'new', '--mode', 'portal', '--param', `portal=${portalB()}`]);
  backend = createTgtBackend({ host, dataDir, options: { portals: [portalA(), portalB()], controlPort, manageDaemon: false }, logger: silentLogger });
  // A short request timeout: the old session's logout over the dead path waits for it.
  driver = createIscsiUserDriver({ host, dataDir, options: { requestTimeoutS: 3, portalProbeMs: 500, qmpTimeoutMs: 15_000 }, logger: silentLogger });
}, 60_000);

afterAll(async () => {
  if (report.length > 0) console.log(`\niscsi-user failover (tgtd in a namespace, two portals)\n${report.join('\n')}`);
  try {
    await pathA('up').catch(() => undefined);
    for (const device of loopsUnder(dataDir)) await host.runner.run('losetup', ['--detach', device], { timeoutMs: 10_000, reject: false });
    await new StorageDaemon({ dir: userPaths(dataDir).daemon, waiter: host.waiter }).stop().catch(() => undefined);
    await unmountFuseUnder(host, dataDir, 10_000).catch(() => undefined);
    for (const volume of made) await backend?.delete(volume, AbortSignal.timeout(30_000)).catch(() => undefined);
    await stopDaemon(path.join(dataDir, 'tgtd.pid'), { timeoutMs: 10_000 }).catch(() => undefined);
    // stopDaemon leaves it: the pid file names nsenter, which exec'd tgtd (another executable), and
    // tgtd ignores SIGTERM while it has targets. Its control port is this file's own.
    await host.runner.run('pkill', ['-KILL', '-f', `^tgtd -f -C ${controlPort} `], { timeoutMs: 10_000, reject: false });
    await rm(`/run/tgtd/socket.${controlPort}`, { force: true });
    await rm(`/run/tgtd/socket.${controlPort}.lock`, { force: true });
  } finally {
    // Deleting the namespace deletes its veth ends, and with them the host's.
    await host.runner.run('ip', ['netns', 'del', netns], { timeoutMs: 10_000, reject: false });
    for (const root of [`bfa${suffix}`, `bfb${suffix}`]) await host.runner.run('ip', ['link', 'del', root], { timeoutMs: 10_000, reject: false });
    await rm(dataDir, { recursive: true, force: true });
  }
}, 90_000);

async function makeVolume(sizeBytes: number, on: VolumeBackend = backend): Promise<{ connection: ConnectionInfo; lunFile: string }> {
  const volume: BackendVolume = { id: randomUUID(), name: 'fo', sizeBytes, providerLocation: null };
  const signal = AbortSignal.timeout(30_000);
  volume.providerLocation = (await on.create(volume, signal)).providerLocation;
  made.push(volume);
  const initiator = (await driver.connectorProperties()).initiator ?? '';
  const connection = await on.initializeConnection(volume, { host: os.hostname(), initiator }, signal);
  return { connection, lunFile: path.join(dataDir, 'backend-tgt', 'luns', `${volume.id}.img`) };
}

interface WriterResult {
  writes: number;
  totalMs: number;
  maxGapMs: number;
  maxGapAtMs: number;
  errors: number;
}

/**
 * Start the writer child: `count` chunks at `offset` of `device`. `done` resolves with what it
 * measured and the bytes it wrote; `writing` once 32 writes have landed.
 */
function startWriter(device: string, offset: number, count: number): { done: Promise<WriterResult & { data: Buffer }>; writing: Promise<void>; finished: () => boolean } {
  const expected = path.join(dataDir, `expected-${randomUUID()}.bin`);
  let over = false;
  let child: ReturnType<typeof execFile> | undefined;
  const done = new Promise<WriterResult & { data: Buffer }>((resolve, reject) => {
    child = execFile(process.execPath, [WRITER, device, expected, String(offset), String(CHUNK), String(count)], { timeout: 300_000 }, (error, stdout) => {
      over = true;
      if (error) return reject(error);
      readFile(expected).then((data) => resolve({ ...(JSON.parse(stdout) as WriterResult), data }), reject);
    });
  });
  const writing = new Promise<void>((resolve) => child?.stderr?.on('data', (text: Buffer) => (text.toString().includes('writing') ? resolve() : undefined)));
  return { done, writing: Promise.race([writing, done.then(() => undefined)]), finished: () => over };
}

async function disconnect(connection: ConnectionInfo, device: Device): Promise<void> {
  await driver.disconnect(connection, device, { force: false, signal: AbortSignal.timeout(60_000) });
}

describe('iscsi-user portal failover (real tgtd on two portals, one made unreachable)', () => {
  it('qemu-storage-daemon dies while portal A is unreachable: the restore leaves the LUN on A to reconcile (no login to the dead portal stalls the daemon) and rebuilds the LUN on B', async () => {
    const onA = await makeVolume(8 * MiB);
    const onB = await makeVolume(8 * MiB);
    const deviceA = await driver.connect(onA.connection, { signal: AbortSignal.timeout(60_000) });
    const deviceB = await driver.connect(onB.connection, { signal: AbortSignal.timeout(60_000) });
    const qsdPid = async (): Promise<number | undefined> => {
      const status = await daemonStatus(path.join(userPaths(dataDir).daemon, 'qsd.pid'));
      return status.running ? status.pid : undefined;
    };
    try {
      expect(await driver.failover(onB.connection, { signal: AbortSignal.timeout(60_000), portal: portalB() })).toMatchObject({ switched: true });
      const marker = randomBytes(8192);
      writeAt(deviceB.path, marker, MiB);
      // Portal A stops answering the way a dead storage path behind a switch does: the link stays
      // up and its SYNs vanish (a link taken down is refused at once, which a login notices fast).
      await blackholeA('on');
      const pid = await qsdPid();
      expect(pid).toBeDefined();
      process.kill(pid!, 'SIGKILL');
      await host.waiter.waitUntil('/proc', async () => ((await qsdPid()) === undefined ? true : undefined), { timeoutMs: 10_000 });
      // Another berth process notices at its first call and restores.
      const second = createIscsiUserDriver({ host, dataDir, options: { requestTimeoutS: 3, portalProbeMs: 500, qmpTimeoutMs: 15_000 }, logger: silentLogger });
      const started = performance.now();
      const listed = await second.connected();
      report.push(`restore with portal A dead: ${Math.round(performance.now() - started)} ms (the LUN on A left to reconcile, the one on B rebuilt)`);
      expect(listed.map((c) => c.device.path)).toEqual([deviceB.path]);
      expect(readAt(deviceB.path, marker.length, MiB).equals(marker)).toBe(true);
      const lost = ((await second.check()).checks ?? []).find((c) => c.name === 'exports lost when qemu-storage-daemon died')?.detail ?? '';
      expect(lost).toContain(`its portal ${portalA()} did not answer when qemu-storage-daemon was restarted`);
      expect(lost).toMatch(/berth reconcile/);
    } finally {
      await blackholeA('off');
      await driver.disconnect(onA.connection, deviceA, { force: true, signal: AbortSignal.timeout(60_000) }).catch(() => undefined);
      await driver.disconnect(onB.connection, deviceB, { force: true, signal: AbortSignal.timeout(60_000) }).catch(() => undefined);
    }
    expect(loopsUnder(dataDir)).toEqual([]);
  }, 180_000);

  it('mutual CHAP: a failover checks the new portal\'s target before qemu\'s session goes there; a target that fails the check is not failed over to', async () => {
    // The check ran once, at connect, on the first listed portal: a failover (or the connect's
    // second portal) logged qemu in to a target nobody had checked.
    const mutual = createTgtBackend({ host, dataDir, options: { portals: [portalA(), portalB()], controlPort, manageDaemon: false, mutualChap: true }, logger: silentLogger });
    const { connection } = await makeVolume(8 * MiB, mutual);
    const checked: string[] = [];
    const recording: HostServices = {
      ...host,
      runner: {
        run: (file, args, options) => {
          if (file === 'iscsi-inq') checked.push(String(args.at(-1)));
          return host.runner.run(file, args, options);
        },
      },
    };
    const failing: HostServices = { ...host, runner: { run: (file, args, options) => host.runner.run(file === 'iscsi-inq' ? 'false' : file, args, options) } };
    const options = { requestTimeoutS: 3, portalProbeMs: 500, qmpTimeoutMs: 15_000 };
    const checking = createIscsiUserDriver({ host: recording, dataDir, options, logger: silentLogger });
    const device = await checking.connect(connection, { signal: AbortSignal.timeout(60_000) });
    try {
      const lunUrl = (portal: string): string => `iscsi://${portal}/${String(connection.data.target_iqn)}/${String(connection.data.target_lun)}`;
      expect(checked).toEqual([lunUrl(portalA())]);
      // The new portal's target fails the check (stands in for another target answering there): nothing moves.
      const refused = createIscsiUserDriver({ host: failing, dataDir, options, logger: silentLogger });
      const error = await refused.failover(connection, { signal: AbortSignal.timeout(60_000), portal: portalB() }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(BerthError.is(error) && error.code).toBe('AUTH_FAILED');
      expect(BerthError.is(error) && error.details).toMatchObject({ portal: portalB() });
      expect(JSON.stringify(BerthError.is(error) ? error.toJSON() : error)).not.toContain(String(connection.data.auth_password_in));
      expect((await driver.checkPaths()).find((p) => p.device === device.path)).toMatchObject({ portal: portalA(), live: true });
      // Checked, it goes.
      expect(await checking.failover(connection, { signal: AbortSignal.timeout(60_000), portal: portalB() })).toMatchObject({ portal: portalB(), switched: true });
      expect(checked).toEqual([lunUrl(portalA()), lunUrl(portalB())]);
      expect((await driver.checkPaths()).find((p) => p.device === device.path)).toMatchObject({ portal: portalB(), live: true });
    } finally {
      await disconnect(connection, device);
    }
    expect(await readdir(userPaths(dataDir).secrets).catch(() => [])).toEqual([]);
  }, 180_000);

  it('a planned failover while a writer runs: the export moves to the other portal, the old one is cut, every byte lands', async () => {
    const { connection, lunFile } = await makeVolume(32 * MiB);
    const device = await driver.connect(connection, { signal: AbortSignal.timeout(60_000) });
    try {
      expect((await driver.checkPaths()).find((p) => p.device === device.path)).toMatchObject({ portal: portalA(), live: true, others: [portalB()] });
      const writer = startWriter(device.path, 0, 512);
      await writer.writing;
      const moved = await driver.failover(connection, { signal: AbortSignal.timeout(60_000), portal: portalB() });
      expect(moved).toMatchObject({ portal: portalB(), previous: portalA(), switched: true });
      // The switch happened under the writer, not after it.
      expect(writer.finished()).toBe(false);
      await pathA('down');
      const written = await writer.done;
      expect(written.errors).toBe(0);
      // Asked again: nothing to do (idempotent); the path it uses answers.
      expect(await driver.failover(connection, { signal: AbortSignal.timeout(30_000), portal: portalB() })).toMatchObject({ switched: false });
      expect((await driver.checkPaths()).find((p) => p.device === device.path)).toMatchObject({ portal: portalB(), live: true });
      await disconnect(connection, device);
      expect((await readFile(lunFile)).subarray(0, written.data.length).equals(written.data)).toBe(true);
      report.push(
        `planned (both live, writer running): switch ${Math.round(moved.ms)} ms; writer ${written.writes} × 64 KiB O_DSYNC in ${written.totalMs} ms, longest wait between writes ${written.maxGapMs} ms, 0 errors, bytes equal`,
      );
    } finally {
      await pathA('up');
    }
  }, 180_000);

  it('an unplanned failover through the contract (what reconcile and the agent call): portal A dies with no request in flight, connected() lists it failed, repairPaths moves the LUN to B, writes go on, bytes equal', async () => {
    const { connection, lunFile } = await makeVolume(16 * MiB);
    const device = await driver.connect(connection, { signal: AbortSignal.timeout(60_000) });
    const listedNow = async () => (await driver.connected()).find((entry) => entry.device.path === device.path);
    try {
      expect((await listedNow())?.device.paths).toEqual([{ portal: portalA(), state: 'active' }, { portal: portalB(), state: 'standby' }]);
      const before = await startWriter(device.path, 0, 32).done;
      await pathA('down');
      const cut = performance.now();
      const listed = await listedNow();
      expect(listed?.device.paths).toEqual([{ portal: portalA(), state: 'failed' }, { portal: portalB(), state: 'standby' }]);
      const started = performance.now();
      const repair = await driver.repairPaths(listed!, { signal: AbortSignal.timeout(60_000) });
      const moved = { ms: performance.now() - started };
      expect(repair).toMatchObject({ changed: true, detail: expect.stringContaining(`from ${portalA()} to ${portalB()}`) });
      const after = await startWriter(device.path, 32 * CHUNK, 32).done;
      const downToWriting = performance.now() - cut;
      expect(after.errors).toBe(0);
      const healed = await listedNow();
      expect(healed?.device.paths).toEqual([{ portal: portalB(), state: 'active' }, { portal: portalA(), state: 'standby' }]);
      expect(await driver.repairPaths(healed!, { signal: AbortSignal.timeout(30_000) })).toMatchObject({ changed: false });
      // The device as listed before the move is still that device: asked again, nothing moves.
      expect(await driver.repairPaths(listed!, { signal: AbortSignal.timeout(30_000) })).toMatchObject({ changed: false });
      await disconnect(connection, device);
      const lun = await readFile(lunFile);
      expect(lun.subarray(0, 32 * CHUNK).equals(before.data)).toBe(true);
      expect(lun.subarray(32 * CHUNK, 64 * CHUNK).equals(after.data)).toBe(true);
      report.push(
        `unplanned, idle (A cut, requestTimeoutS 3): failover ${Math.round(moved.ms)} ms (login B + re-point + the old session's logout, which waits out the request timeout); cut → 2 MiB more written ${Math.round(downToWriting)} ms; bytes equal`,
      );
    } finally {
      await pathA('up');
    }
  }, 180_000);

  it('a path that dies under I/O cannot be failed over on qemu 7.2: TIMEOUT with a hint, the writes wait for the path and then land; a later failover finishes', async () => {
    const { connection, lunFile } = await makeVolume(96 * MiB);
    const device = await driver.connect(connection, { signal: AbortSignal.timeout(60_000) });
    // A second berth process that gives the daemon 3 s to answer.
    const impatient = createIscsiUserDriver({ host, dataDir, options: { requestTimeoutS: 3, portalProbeMs: 500, qmpTimeoutMs: 3_000, lockTimeoutMs: 10_000 }, logger: silentLogger });
    const OUTAGE_MS = 8_000;
    // The LUN is on A (the first portal) before A is cut.
    expect((await driver.checkPaths()).find((p) => p.device === device.path)).toMatchObject({ portal: portalA(), live: true });
    const writer = startWriter(device.path, 0, 1024);
    let connected = true;
    try {
      await writer.writing;
      await pathA('down');
      const cut = performance.now();
      const failed = await impatient.failover(connection, { signal: AbortSignal.timeout(30_000) }).then(
        () => undefined,
        (error: unknown) => error as { code?: string; hint?: string; message?: string },
      );
      const answeredMs = performance.now() - cut;
      expect(failed?.code, failed?.message).toBe('TIMEOUT');
      expect(failed?.hint).toMatch(/cannot move requests already in flight/);
      expect(writer.finished()).toBe(false);
      // The outage goes on for a while (the fault being staged), then the path comes back.
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, OUTAGE_MS - answeredMs)));
      await pathA('up');
      const written = await writer.done;
      expect(written.errors).toBe(0);
      // The path answers again: nothing to move; whatever the cut-short call queued is gone.
      expect(await driver.failover(connection, { signal: AbortSignal.timeout(60_000) })).toMatchObject({ portal: portalA(), switched: false });
      connected = false;
      await disconnect(connection, device);
      expect((await readFile(lunFile)).subarray(0, written.data.length).equals(written.data)).toBe(true);
      report.push(
        `under I/O (A cut for ${OUTAGE_MS / 1000} s while writing): failover answered TIMEOUT after ${Math.round(answeredMs)} ms (qmpTimeoutMs 3000); the writer waited ${written.maxGapMs} ms (the outage), 0 errors, bytes equal`,
      );
    } finally {
      await pathA('up');
      await writer.done.catch(() => undefined);
      if (connected) await disconnect(connection, device).catch(() => undefined);
    }
  }, 180_000);

  it.each(FAILOVER_POINTS)('a failover SIGKILLed at %s (a real child process) is finished by the next one; the device keeps its bytes; detach leaves nothing', async (point) => {
    const { connection, lunFile } = await makeVolume(16 * MiB);
    const device = await driver.connect(connection, { signal: AbortSignal.timeout(60_000) });
    const marker = randomBytes(128 * 1024);
    writeAt(device.path, marker, 5 * MiB);
    const child = spawnSync(process.execPath, [CRASH_CHILD, dataDir, 'failover', JSON.stringify(connection), portalB()], {
      env: { ...process.env, FAULT: point },
      encoding: 'utf8',
      timeout: 90_000,
    });
    expect(child.signal, child.stdout + child.stderr).toBe('SIGKILL');
    // A fresh driver (the next berth process) asks for the same move.
    const next = createIscsiUserDriver({ host, dataDir, options: { requestTimeoutS: 3, portalProbeMs: 500 }, logger: silentLogger });
    const moved = await next.failover(connection, { signal: AbortSignal.timeout(60_000), portal: portalB() });
    expect(moved.portal).toBe(portalB());
    expect((await next.checkPaths()).find((p) => p.device === device.path)).toMatchObject({ portal: portalB(), live: true });
    expect(readAt(device.path, marker.length, 5 * MiB).equals(marker)).toBe(true);
    const more = randomBytes(64 * 1024);
    writeAt(device.path, more, 7 * MiB);
    await next.disconnect(connection, device, { force: false, signal: AbortSignal.timeout(60_000) });
    expect(loopsUnder(dataDir)).toEqual([]);
    expect(await host.fs.readdir(userPaths(dataDir).records)).toEqual([]);
    expect(readAt(lunFile, more.length, 7 * MiB).equals(more)).toBe(true);
    report.push(`crash at ${point}: the next failover ${moved.switched ? 'made the switch' : 'adopted the finished switch'}; bytes kept, nothing left after detach`);
  }, 180_000);

  it('passes both failover fault points on the way', async () => {
    const { FaultInjector } = await import('@berth/core');
    const watching = new FaultInjector({ 'nothing.armed.here': 'throw' });
    const { connection } = await makeVolume(8 * MiB);
    const watched = createIscsiUserDriver({ host, dataDir, options: { requestTimeoutS: 3, portalProbeMs: 500 }, logger: silentLogger, faults: watching });
    const device = await watched.connect(connection, { signal: AbortSignal.timeout(60_000) });
    await watched.failover(connection, { signal: AbortSignal.timeout(60_000), portal: portalB() });
    await watched.disconnect(connection, device, { force: false, signal: AbortSignal.timeout(60_000) });
    expect([...watching.seen].filter((p) => p.includes('failover')).sort()).toEqual(FAILOVER_POINTS);
  }, 120_000);
});
