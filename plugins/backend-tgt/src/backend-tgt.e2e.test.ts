import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { readFile, readdir, stat, statfs, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BerthError, zConnectionInfo, type BackendVolume, type ConnectionInfo, type Connector } from '@berth/core';
import { daemonStatus, startDaemon, stopDaemon } from '@berth/host';
import { managedTgtdPaths, stopManagedTgtd } from './managed-tgtd.js';
import { parseTargetList } from './tgtadm-show-parser.js';
import { createTgtTestEnv, loginAndReadCapacity, type LoginAuth, type TgtTestEnv } from './test-tgt-env.js';

const MiB = 1024 * 1024;
const INITIATOR_A = 'iqn.2026-11.io.berth.test:host-a';
const INITIATOR_B = 'iqn.2026-11.io.berth.test:host-b';
const hostA: Connector = { host: 'host-a', initiator: INITIATOR_A };
const hostB: Connector = { host: 'host-b', initiator: INITIATOR_B };

let env: TgtTestEnv;
// Every password handed out in this file: none may show up in a log line or an error.
const handedOut = new Set<string>();

beforeAll(async () => {
  env = await createTgtTestEnv();
}, 30_000);

afterAll(async () => {
  await env?.dispose();
}, 30_000);

function signal(): AbortSignal {
  return AbortSignal.timeout(20_000);
}

function volume(sizeBytes = 32 * MiB): BackendVolume {
  return { id: randomUUID(), name: 'db', sizeBytes, providerLocation: null };
}

function remember(info: ConnectionInfo): ConnectionInfo {
  for (const key of ['auth_password', 'auth_password_in'] as const) {
    const value = info.data[key];
    if (typeof value === 'string') handedOut.add(value);
  }
  return info;
}

function authOf(info: ConnectionInfo): LoginAuth {
  const { auth_username: username, auth_password: password } = info.data;
  if (typeof username !== 'string' || typeof password !== 'string') throw new Error('no CHAP in the connection_info');
  return { username, password };
}

/** Log in as `initiator`; `auth` defaults to the connection_info's CHAP, `null` logs in without. */
async function login(info: ConnectionInfo, initiator: string, auth?: LoginAuth | null) {
  const credentials = auth === undefined ? authOf(info) : auth;
  return loginAndReadCapacity(env.runner, {
    portal: String(info.data.target_portal),
    iqn: String(info.data.target_iqn),
    lun: Number(info.data.target_lun),
    initiator,
    ...(credentials ? { auth: credentials } : {}),
  });
}

async function targets() {
  const result = await env.runner.run('tgtadm', ['-C', String(env.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target']);
  return parseTargetList(result.stdout);
}

/** The iSCSI parameters tgtd offers on target `tid` (`tgtadm --op show --mode target --tid N`: `name=value` lines). */
async function sessionParamsOf(tid: number | undefined): Promise<Record<string, string>> {
  const result = await env.runner.run('tgtadm', ['-C', String(env.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target', '--tid', String(tid)]);
  return Object.fromEntries(result.stdout.split('\n').flatMap((line) => (/^\w+=/.test(line) ? [line.split('=', 2) as [string, string]] : [])));
}

/** What the backend's default `sessionParams` make tgtd offer. */
const TUNED = { MaxRecvDataSegmentLength: '262144', MaxXmitDataSegmentLength: '262144', FirstBurstLength: '262144', MaxBurstLength: '1048576', InitialR2T: 'No' };

/** A second backend on the suite's tgtd that berth does not manage (`manageDaemon: false`), state in `dataDir`. */
async function unmanagedBackend(dataDir: string, iqnPrefix: string) {
  const { createTgtBackend } = await import('./backend-tgt.js');
  const { collectingLogger } = await import('./test-tgt-env.js');
  return createTgtBackend({
    host: env.host,
    dataDir,
    options: { manageDaemon: false, controlPort: env.controlPort, portals: env.portals, iqnPrefix },
    logger: collectingLogger(env.logs),
  });
}

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  return promise.then(
    () => undefined,
    (error: unknown) => {
      if (!BerthError.is(error)) return `not a BerthError: ${String(error)}`;
      for (const secret of handedOut) expect(JSON.stringify({ m: error.message, h: error.hint, d: error.details })).not.toContain(secret);
      return error.code;
    },
  );
}

describe('tgt backend on a real tgtd', () => {
  it('create → initializeConnection → a real CHAP login as that initiator sees a LUN of the volume size', async () => {
    const v = volume(48 * MiB);
    const { providerLocation } = await env.backend.create(v, signal());
    expect(providerLocation).toBe(`iqn.2026-11.io.berth:volume-${v.id}`);
    const info = remember(await env.backend.initializeConnection(v, hostA, signal()));

    expect(zConnectionInfo.safeParse(info).success).toBe(true);
    expect(info.driver_volume_type).toBe('iscsi');
    expect(info.data).toMatchObject({
      target_portal: env.portals[0],
      target_iqn: providerLocation,
      target_lun: 1,
      target_discovered: false,
      auth_method: 'CHAP',
      volume_id: v.id,
      access_mode: 'rw',
    });
    expect(info.data.target_portals).toBeUndefined();
    expect(String(info.data.auth_username)).toMatch(/^berth-[0-9a-f]{12}$/);
    expect(String(info.data.auth_password)).toMatch(/^[A-Za-z0-9]{24}$/);

    const seen = await login(info, INITIATOR_A);
    expect(seen.exitCode, seen.output).toBe(0);
    expect(seen.sizeBytes).toBe(48 * MiB);

    // The LUN is the sparse file in the LUN directory, private to its owner.
    const file = path.join(env.dataDir, 'backend-tgt', 'luns', `${v.id}.img`);
    expect((await stat(file)).size).toBe(48 * MiB);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const [target] = (await targets()).filter((t) => t.iqn === providerLocation);
    expect(target?.luns.find((l) => l.lun === 1)).toMatchObject({ backingStorePath: file, backingStoreType: 'rdwr' });
    expect(target?.acls).toEqual([INITIATOR_A]);
    expect(target?.accounts).toEqual([{ user: info.data.auth_username, outgoing: false }]);
    expect(await sessionParamsOf(target?.tid)).toMatchObject(TUNED);
  });

  it('refuses a wrong password (libiscsi rc 10) and a login without CHAP', async () => {
    const v = volume();
    await env.backend.create(v, signal());
    const info = remember(await env.backend.initializeConnection(v, hostA, signal()));
    const wrong = await login(info, INITIATOR_A, { ...authOf(info), password: 'WrongPassword0123456789x' });
    expect(wrong.exitCode).toBe(10);
    expect(wrong.output).toMatch(/Authentication failure/);
    const none = await login(info, INITIATOR_A, null);
    expect(none.exitCode).toBe(10);
  });

  it('refuses an initiator that is not in the ACL, even with the right password', async () => {
    const v = volume();
    await env.backend.create(v, signal());
    const info = remember(await env.backend.initializeConnection(v, hostA, signal()));
    const other = await login(info, INITIATOR_B);
    expect(other.exitCode).toBe(10);
    expect(other.output).toMatch(/not found|Authorization|Target/i);
    // Exporting to B as well lets B in with the same volume credentials.
    remember(await env.backend.initializeConnection(v, hostB, signal()));
    expect((await login(info, INITIATOR_B)).exitCode).toBe(0);
  });

  it('terminateConnection removes the ACL (login refused after), and twice is fine', async () => {
    const v = volume();
    await env.backend.create(v, signal());
    const info = remember(await env.backend.initializeConnection(v, hostA, signal()));
    expect((await login(info, INITIATOR_A)).exitCode).toBe(0);
    await env.backend.terminateConnection(v, hostA, signal());
    expect((await login(info, INITIATOR_A)).exitCode).toBe(10);
    await env.backend.terminateConnection(v, hostA, signal());
    const [target] = (await targets()).filter((t) => t.iqn === info.data.target_iqn);
    expect(target?.acls).toEqual([]);
    const state = JSON.parse(await readFile(path.join(env.dataDir, 'backend-tgt', 'state.json'), 'utf8')) as {
      volumes: Record<string, { initiators: string[] }>;
    };
    expect(state.volumes[v.id]?.initiators).toEqual([]);
  });

  it('needs the connector\'s initiator name to export (UNPROCESSABLE), and refuses a name tgtadm could misread', async () => {
    const v = volume();
    await env.backend.create(v, signal());
    const error = await env.backend.initializeConnection(v, { host: 'no-iscsi' }, signal()).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('UNPROCESSABLE');
    expect((error as BerthError).hint).toMatch(/open-iscsi/);
    expect(await codeOf(env.backend.initializeConnection(v, { host: 'x', initiator: 'iqn.2026-11.x:a,initiator-address=ALL' }, signal()))).toBe(
      'VALIDATION',
    );
    // Without an initiator there is nothing to unbind.
    await env.backend.terminateConnection(v, { host: 'no-iscsi' }, signal());
  });

  it('says NOT_FOUND for a volume it never created', async () => {
    expect(await codeOf(env.backend.initializeConnection(volume(), hostA, signal()))).toBe('NOT_FOUND');
    expect(await codeOf(env.backend.extend?.(volume(), 64 * MiB, signal()) ?? Promise.resolve())).toBe('NOT_FOUND');
    expect(await codeOf(env.backend.credentials?.(volume()) ?? Promise.resolve())).toBe('NOT_FOUND');
  });

  it('after tgtd is killed (SIGKILL), the next call restarts it and the target is back with its CHAP and ACL', async () => {
    const v = volume(40 * MiB);
    await env.backend.create(v, signal());
    const info = remember(await env.backend.initializeConnection(v, hostA, signal()));
    const iqn = String(info.data.target_iqn);
    const tidBefore = (await targets()).find((t) => t.iqn === iqn)?.tid;
    const { pidFile } = managedTgtdPaths(env.dataDir);
    const before = await daemonStatus(pidFile);
    expect(before.running).toBe(true);
    process.kill(before.pid ?? 0, 'SIGKILL');
    await expect.poll(async () => (await daemonStatus(pidFile)).running, { timeout: 5_000, interval: 10 }).toBe(false);
    expect((await login(info, INITIATOR_A)).exitCode).toBe(10);

    // Any call brings it back; exports() is the cheapest.
    const exported = await env.backend.exports?.();
    const after = await daemonStatus(pidFile);
    expect(after.running).toBe(true);
    expect(after.pid).not.toBe(before.pid);
    expect(exported).toContainEqual({ volumeId: v.id, initiator: INITIATOR_A });

    const seen = await login(info, INITIATOR_A);
    expect(seen.exitCode, seen.output).toBe(0);
    expect(seen.sizeBytes).toBe(40 * MiB);
    expect((await login(info, INITIATOR_A, { ...authOf(info), password: 'WrongPassword0123456789x' })).exitCode).toBe(10);
    expect((await login(info, INITIATOR_B)).exitCode).toBe(10);
    // Same tid, so the LUN keeps its SCSI identity (tgtd derives the WWN from tid and LUN).
    expect((await targets()).find((t) => t.iqn === iqn)?.tid).toBe(tidBefore);
    // The re-created target offers the session parameters again (tgtd kept nothing).
    expect(await sessionParamsOf(tidBefore)).toMatchObject(TUNED);
    expect(readFileSync(managedTgtdPaths(env.dataDir).logFile, 'utf8')).toMatch(/berth: starting tgtd .*\n[\s\S]*berth: starting tgtd/);
  });

  it('upkeep (berth serve) restarts a tgtd that died and restores its target; with tgtd running it starts nothing; on a data dir without volumes it starts no tgtd', async () => {
    const v = volume(24 * MiB);
    await env.backend.create(v, signal());
    const info = remember(await env.backend.initializeConnection(v, hostA, signal()));
    const { pidFile, logFile } = managedTgtdPaths(env.dataDir);
    const starts = (): number => (readFileSync(logFile, 'utf8').match(/berth: starting tgtd/g) ?? []).length;
    const before = await daemonStatus(pidFile);
    await env.backend.upkeep!(signal());
    expect(await daemonStatus(pidFile)).toEqual(before);
    const started = starts();
    process.kill(before.pid ?? 0, 'SIGKILL');
    await expect.poll(async () => (await daemonStatus(pidFile)).running, { timeout: 5_000, interval: 10 }).toBe(false);

    await env.backend.upkeep!(signal());
    const after = await daemonStatus(pidFile);
    expect(after.running).toBe(true);
    expect(after.pid).not.toBe(before.pid);
    expect(starts()).toBe(started + 1);
    const seen = await login(info, INITIATOR_A);
    expect(seen.exitCode, seen.output).toBe(0);
    await env.backend.upkeep!(signal());
    expect(starts()).toBe(started + 1);
    // Stopped on purpose (`berth backend stop tgt`): upkeep leaves it; the next operation starts it.
    await stopManagedTgtd(env.dataDir, env.controlPort, { runner: env.runner });
    await env.backend.upkeep!(signal());
    expect((await daemonStatus(pidFile)).running).toBe(false);
    expect(starts()).toBe(started + 1);
    await env.backend.initializeConnection(v, hostA, signal());
    expect((await daemonStatus(pidFile)).running).toBe(true);
    expect(starts()).toBe(started + 2);
    process.kill((await daemonStatus(pidFile)).pid ?? 0, 'SIGKILL');
    await expect.poll(async () => (await daemonStatus(pidFile)).running, { timeout: 5_000, interval: 10 }).toBe(false);
    await env.backend.upkeep!(signal());
    expect(starts()).toBe(started + 3);
    // A stop racing an upkeep restore (both meet under the state lock): whichever comes first,
    // tgtd is not running once both ended. Before, a restore past its look at the mark could start
    // tgtd after the stop looked — a window of a few ms these rounds do not force; they show that
    // both orders end stopped and that neither waits on the other for good.
    for (let round = 0; round < 3; round += 1) {
      process.kill((await daemonStatus(pidFile)).pid ?? 0, 'SIGKILL');
      await expect.poll(async () => (await daemonStatus(pidFile)).running, { timeout: 5_000, interval: 10 }).toBe(false);
      await Promise.all([env.backend.upkeep!(signal()), stopManagedTgtd(env.dataDir, env.controlPort, { runner: env.runner })]);
      expect((await daemonStatus(pidFile)).running, `round ${round}`).toBe(false);
      // The stop holds: its mark is there, and the next round starts nothing.
      expect(existsSync(managedTgtdPaths(env.dataDir).stoppedFile), `round ${round}`).toBe(true);
      await env.backend.upkeep!(signal());
      expect((await daemonStatus(pidFile)).running, `round ${round}, next upkeep`).toBe(false);
      await env.backend.initializeConnection(v, hostA, signal());
    }
    await env.backend.terminateConnection(v, hostA, signal());
    await env.backend.delete(v, signal());

    const empty = await createTgtTestEnv();
    try {
      await empty.backend.upkeep!(signal());
      expect((await daemonStatus(managedTgtdPaths(empty.dataDir).pidFile)).running).toBe(false);
      expect(await empty.runner.run('tgtadm', ['-C', String(empty.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'sys'], { reject: false })).toMatchObject({ exitCode: 107 });
    } finally {
      await empty.dispose();
    }
  });

  it('after tgtd is stopped, a fresh backend (a new CLI process) restores every export on its first call', async () => {
    const v = volume();
    await env.backend.create(v, signal());
    const info = remember(await env.backend.initializeConnection(v, hostA, signal()));
    await stopManagedTgtd(env.dataDir, env.controlPort, { runner: env.runner });
    expect((await daemonStatus(managedTgtdPaths(env.dataDir).pidFile)).running).toBe(false);
    const fresh = env.backendWith({});
    expect((await fresh.credentials?.(v))?.auth_password).toBe(info.data.auth_password);
    await fresh.initializeConnection(v, hostA, signal());
    expect((await login(info, INITIATOR_A)).exitCode).toBe(0);
  });

  it('extend grows the file and tgtd reports the new size (offline + path re-open)', async () => {
    const v = volume(32 * MiB);
    await env.backend.create(v, signal());
    const info = remember(await env.backend.initializeConnection(v, hostA, signal()));
    await env.backend.extend?.(v, 80 * MiB, signal());
    expect((await stat(path.join(env.dataDir, 'backend-tgt', 'luns', `${v.id}.img`))).size).toBe(80 * MiB);
    const seen = await login(info, INITIATOR_A);
    expect(seen.sizeBytes).toBe(80 * MiB);
    const lun = (await targets()).find((t) => t.iqn === info.data.target_iqn)?.luns.find((l) => l.lun === 1);
    // tgtadm prints whole 10^6-byte megabytes, rounded: 83 886 080 bytes show as 84.
    expect(lun).toMatchObject({ online: true, sizeMb: 84 });
    // The same size again is a no-op; smaller is refused.
    await env.backend.extend?.(v, 80 * MiB, signal());
    expect(await codeOf(env.backend.extend?.(v, 16 * MiB, signal()) ?? Promise.resolve())).toBe('VALIDATION');
  });

  it('mutual CHAP: the target proves itself too, and a wrong target secret fails the login', async () => {
    const mutual = env.backendWith({ mutualChap: true });
    const v = volume();
    await mutual.create(v, signal());
    const info = remember(await mutual.initializeConnection(v, hostA, signal()));
    expect(info.data).toMatchObject({ auth_method: 'CHAP' });
    expect(String(info.data.auth_username_in)).toMatch(/^berth-t-[0-9a-f]{12}$/);
    const auth: LoginAuth = { ...authOf(info), targetUsername: String(info.data.auth_username_in), targetPassword: String(info.data.auth_password_in) };
    expect((await login(info, INITIATOR_A, auth)).exitCode).toBe(0);
    const wrong = await login(info, INITIATOR_A, { ...auth, targetPassword: 'WrongTargetSecret0123456' });
    expect(wrong.exitCode).toBe(10);
    expect(await mutual.credentials?.(v)).toEqual({
      auth_method: 'CHAP',
      auth_username: info.data.auth_username,
      auth_password: info.data.auth_password,
      auth_username_in: info.data.auth_username_in,
      auth_password_in: info.data.auth_password_in,
    });
  });

  it('chap: false exports without authentication', async () => {
    const open = env.backendWith({ chap: false });
    const v = volume();
    await open.create(v, signal());
    const info = await open.initializeConnection(v, hostA, signal());
    expect(info.data.auth_method).toBeUndefined();
    expect((await login(info, INITIATOR_A, null)).exitCode).toBe(0);
    expect((await login(info, INITIATOR_B, null)).exitCode).toBe(10);
  });

  it('with a live session (qemu-storage-daemon logged in): extend keeps it, delete is refused until it ends', async () => {
    const v = volume(32 * MiB);
    await env.backend.create(v, signal());
    const info = remember(await env.backend.initializeConnection(v, hostA, signal()));
    const auth = authOf(info);
    const secretFile = path.join(env.dataDir, 'qsd-secret');
    await writeFile(secretFile, auth.password, { mode: 0o600 });
    const pidFile = path.join(env.dataDir, 'qsd.pid');
    const iqn = String(info.data.target_iqn);
    try {
      await startDaemon({
        file: 'qemu-storage-daemon',
        args: [
          '--object',
          `secret,id=sec0,file=${secretFile}`,
          '--blockdev',
          `driver=iscsi,node-name=vol,transport=tcp,portal=${String(info.data.target_portal)},target=${iqn},lun=1,initiator-name=${INITIATOR_A},user=${auth.username},password-secret=sec0`,
        ],
        logFile: path.join(env.dataDir, 'qsd.log'),
        pidFile,
      });
      await expect.poll(async () => (await targets()).find((t) => t.iqn === iqn)?.nexuses.length ?? 0, { timeout: 10_000, interval: 20 }).toBe(1);

      await env.backend.extend?.(v, 64 * MiB, signal());
      const target = (await targets()).find((t) => t.iqn === iqn);
      expect(target?.nexuses.map((n) => n.initiator)).toEqual([INITIATOR_A]);
      expect(target?.luns.find((l) => l.lun === 1)).toMatchObject({ online: true, sizeMb: 67 });

      const refused = await env.backend.delete(v, signal()).catch((e: unknown) => e);
      expect(BerthError.is(refused) && refused.code).toBe('CONFLICT');
      expect((refused as BerthError).message).toContain(INITIATOR_A);
      expect((await stat(path.join(env.dataDir, 'backend-tgt', 'luns', `${v.id}.img`))).size).toBe(64 * MiB);
    } finally {
      await stopDaemon(pidFile, { timeoutMs: 5_000 });
    }
    await expect.poll(async () => (await targets()).find((t) => t.iqn === iqn)?.nexuses.length ?? 0, { timeout: 10_000, interval: 20 }).toBe(0);
    await env.backend.delete(v, signal());
    expect((await targets()).some((t) => t.iqn === iqn)).toBe(false);
  });

  it('delete removes the target, its accounts and the file, and twice is fine', async () => {
    const v = volume();
    await env.backend.create(v, signal());
    const info = remember(await env.backend.initializeConnection(v, hostA, signal()));
    const iqn = String(info.data.target_iqn);
    await env.backend.delete(v, signal());
    expect((await targets()).some((t) => t.iqn === iqn)).toBe(false);
    const accounts = await env.runner.run('tgtadm', ['-C', String(env.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'account']);
    expect(accounts.stdout).not.toContain(String(info.data.auth_username));
    await expect(stat(path.join(env.dataDir, 'backend-tgt', 'luns', `${v.id}.img`))).rejects.toThrow(/ENOENT/);
    await env.backend.delete(v, signal());
    expect(await codeOf(env.backend.credentials?.(v) ?? Promise.resolve())).toBe('NOT_FOUND');
  });

  it('creates concurrently without two volumes sharing a tid', async () => {
    const other = env.backendWith({});
    const volumes = Array.from({ length: 10 }, () => volume(MiB));
    await Promise.all(volumes.map((v, i) => (i % 2 === 0 ? env.backend : other).create(v, signal())));
    const ours = (await targets()).filter((t) => volumes.some((v) => t.iqn.endsWith(v.id)));
    expect(ours).toHaveLength(10);
    expect(new Set(ours.map((t) => t.tid)).size).toBe(10);
    await Promise.all(volumes.map((v) => env.backend.delete(v, signal())));
  });

  it('create twice is the same volume; another size is a CONFLICT', async () => {
    const v = volume();
    const first = await env.backend.create(v, signal());
    expect(await env.backend.create(v, signal())).toEqual(first);
    expect(await codeOf(env.backend.create({ ...v, sizeBytes: 64 * MiB }, signal()))).toBe('CONFLICT');
  });

  it('each volume\'s LUN has its own SCSI identity (WWN): a volume made after a deleted one, on its tid, does not get the deleted one\'s', async () => {
    const { volumeScsiId } = await import('./backend-tgt.js');
    const scsiIdOf = async (info: ConnectionInfo) => (await targets()).find((t) => t.iqn === info.data.target_iqn)?.luns.find((l) => l.lun === 1)?.scsiId;
    const a = volume();
    await env.backend.create(a, signal());
    const infoA = remember(await env.backend.initializeConnection(a, hostA, signal()));
    const tidA = (await targets()).find((t) => t.iqn === infoA.data.target_iqn)?.tid;
    expect(await scsiIdOf(infoA)).toBe(volumeScsiId(a.id));
    await env.backend.terminateConnection(a, hostA, signal());
    await env.backend.delete(a, signal());
    const b = volume();
    await env.backend.create(b, signal());
    const infoB = remember(await env.backend.initializeConnection(b, hostA, signal()));
    // The smallest free tid: the deleted volume's. tgtd's default identity (tid and LUN) would be the same.
    expect((await targets()).find((t) => t.iqn === infoB.data.target_iqn)?.tid).toBe(tidA);
    expect(await scsiIdOf(infoB)).toBe(volumeScsiId(b.id));
    expect(volumeScsiId(b.id)).not.toBe(volumeScsiId(a.id));
    await env.backend.terminateConnection(b, hostA, signal());
    await env.backend.delete(b, signal());
  });

  it('a tgtd restarted behind an unmanaged backend with another target at the recorded tid: no call touches that target', async () => {
    const { mkdtemp, rm, writeFile: write } = await import('node:fs/promises');
    const os = await import('node:os');
    const otherDir = await mkdtemp(path.join(os.tmpdir(), 'berth-tgt-tidreuse-'));
    const foreignIqn = 'iqn.2020-01.example:foreign';
    const foreignFile = path.join(otherDir, 'foreign.img');
    const tgtadm = (...args: string[]) => env.runner.run('tgtadm', ['-C', String(env.controlPort), '--lld', 'iscsi', ...args]);
    let foreignTid: number | undefined;
    try {
      await write(foreignFile, Buffer.alloc(4 * MiB));
      const unmanaged = await unmanagedBackend(otherDir, 'iqn.2026-11.io.berth.reuse');
      const x = volume();
      await unmanaged.create(x, signal());
      const info = remember(await unmanaged.initializeConnection(x, hostA, signal()));
      const tid = (await targets()).find((t) => t.iqn === info.data.target_iqn)!.tid;
      // What a restart of that tgtd leaves: the volume's target gone, another one at its tid.
      await tgtadm('--op', 'delete', '--mode', 'target', '--tid', String(tid), '--force');
      await tgtadm('--op', 'new', '--mode', 'target', '--tid', String(tid), '-T', foreignIqn);
      await tgtadm('--op', 'new', '--mode', 'logicalunit', '--tid', String(tid), '--lun', '1', '-b', foreignFile);
      foreignTid = tid;
      const foreign = async () => (await targets()).find((t) => t.tid === tid);
      const before = await foreign();

      await unmanaged.initializeConnection(x, hostB, signal());
      await unmanaged.extend!(x, 64 * MiB, signal());
      await unmanaged.terminateConnection(x, hostA, signal());
      // The foreign target is as it was: its LUN on its own file, its ACL untouched.
      const after = await foreign();
      expect(after?.iqn).toBe(foreignIqn);
      expect(after?.luns.find((l) => l.lun === 1)?.backingStorePath).toBe(foreignFile);
      expect(after?.acls).toEqual(before?.acls);
      // The volume's target is back at another tid, with the ACL its calls made.
      const mine = (await targets()).find((t) => t.iqn === info.data.target_iqn);
      expect(mine?.tid).not.toBe(tid);
      expect(mine?.acls).toEqual([INITIATOR_B]);
      await unmanaged.terminateConnection(x, hostB, signal());
      await unmanaged.delete(x, signal());
    } finally {
      if (foreignTid !== undefined) await tgtadm('--op', 'delete', '--mode', 'target', '--tid', String(foreignTid), '--force').catch(() => undefined);
      await rm(otherDir, { recursive: true, force: true });
    }
  });

  it('drives an existing tgtd with manageDaemon: false (its own targets untouched, its tids avoided)', async () => {
    const { mkdtemp, rm } = await import('node:fs/promises');
    const os = await import('node:os');
    const otherDir = await mkdtemp(path.join(os.tmpdir(), 'berth-tgt-unmanaged-'));
    try {
      const unmanaged = await unmanagedBackend(otherDir, 'iqn.2026-11.io.berth.other');
      const tidsBefore = (await targets()).map((t) => t.tid);
      const v = volume();
      await unmanaged.create(v, signal());
      const info = remember(await unmanaged.initializeConnection(v, hostA, signal()));
      const mine = (await targets()).find((t) => t.iqn === info.data.target_iqn);
      expect(tidsBefore).not.toContain(mine?.tid);
      expect((await login(info, INITIATOR_A)).exitCode).toBe(0);
      expect((await unmanaged.check()).ok).toBe(true);
      await unmanaged.terminateConnection(v, hostA, signal());
      await unmanaged.delete(v, signal());
      expect((await targets()).map((t) => t.tid)).toEqual(tidsBefore);
    } finally {
      await rm(otherDir, { recursive: true, force: true });
    }
  });

  it('upkeep of a system tgtd (manageDaemon: false) that lost berth\'s targets (restarted under it) puts them back; with them there it changes nothing', async () => {
    const { mkdtemp, rm } = await import('node:fs/promises');
    const os = await import('node:os');
    const otherDir = await mkdtemp(path.join(os.tmpdir(), 'berth-tgt-unmanaged-'));
    try {
      // The suite's tgtd (berth's own for env.backend) plays the system's: running whatever ran before.
      const warm = volume();
      await env.backend.create(warm, signal());
      await env.backend.delete(warm, signal());
      const unmanaged = await unmanagedBackend(otherDir, 'iqn.2026-11.io.berth.sys');
      const v = volume();
      await unmanaged.create(v, signal());
      const info = remember(await unmanaged.initializeConnection(v, hostA, signal()));
      const mine = async () => (await targets()).find((t) => t.iqn === info.data.target_iqn);
      const before = await mine();
      await unmanaged.upkeep!(signal());
      expect(await mine()).toEqual(before);
      // What a tgtd restarted behind berth has: none of berth's targets.
      await env.runner.run('tgtadm', ['-C', String(env.controlPort), '--lld', 'iscsi', '--op', 'delete', '--mode', 'target', '--tid', String(before?.tid), '--force']);
      expect(await mine()).toBeUndefined();
      await unmanaged.upkeep!(signal());
      expect((await mine())?.iqn).toBe(info.data.target_iqn);
      expect((await login(info, INITIATOR_A)).exitCode).toBe(0);
      expect(env.logs.some((l) => /system tgtd lost targets/.test(l.msg ?? ''))).toBe(true);
      await unmanaged.terminateConnection(v, hostA, signal());
      await unmanaged.delete(v, signal());
    } finally {
      await rm(otherDir, { recursive: true, force: true });
    }
  });

  it('check() reports a running tgtd with its portals; a missing tool says how to install it', async () => {
    const result = await env.backend.check();
    expect(result.ok).toBe(true);
    expect(result.summary).not.toContain('\n');
    expect(result.summary).toContain(String(env.controlPort));
  });

  it('says CONFLICT when a tgtd berth did not start holds its control port', async () => {
    const { mkdtemp, rm } = await import('node:fs/promises');
    const os = await import('node:os');
    const otherDir = await mkdtemp(path.join(os.tmpdir(), 'berth-tgt-foreign-'));
    try {
      // Another data dir, same control port: that tgtd is not this backend's.
      const { createTgtBackend } = await import('./backend-tgt.js');
      const { collectingLogger } = await import('./test-tgt-env.js');
      const intruder = createTgtBackend({ host: env.host, dataDir: otherDir, options: { controlPort: env.controlPort, portals: env.portals }, logger: collectingLogger(env.logs) });
      expect(await codeOf(intruder.create(volume(), signal()))).toBe('CONFLICT');
    } finally {
      await rm(otherDir, { recursive: true, force: true });
    }
  });

  it('keeps state.json private and never writes a CHAP password to a log line', async () => {
    const stateFile = path.join(env.dataDir, 'backend-tgt', 'state.json');
    expect((await stat(stateFile)).mode & 0o777).toBe(0o600);
    expect(handedOut.size).toBeGreaterThan(5);
    const everything = JSON.stringify(env.logs);
    // The runner logged the tgtadm commands that carried the secrets, masked.
    expect(env.logs.some((l) => String(l.obj.command ?? '').includes('--password ***'))).toBe(true);
    for (const secret of handedOut) expect(everything).not.toContain(secret);
    // Restores after the kill ran too, and logged nothing secret either.
    expect(env.logs.some((l) => l.msg === 'exports restored on the new tgtd')).toBe(true);
  });

  it('keeps working when the state file is edited to drop an initiator (drift is repaired on the next first call)', async () => {
    const v = volume();
    await env.backend.create(v, signal());
    const info = remember(await env.backend.initializeConnection(v, hostA, signal()));
    const stateFile = path.join(env.dataDir, 'backend-tgt', 'state.json');
    const state = JSON.parse(await readFile(stateFile, 'utf8')) as { volumes: Record<string, { initiators: string[] }> };
    const entry = state.volumes[v.id];
    if (entry) entry.initiators = [];
    await writeFile(stateFile, JSON.stringify(state), { mode: 0o600 });
    // A new process reconciles on its first call: the state is the truth, the ACL goes.
    await env.backendWith({}).exports?.();
    expect((await login(info, INITIATOR_A)).exitCode).toBe(10);
  });

  it('an extend cut short after `online=0` (a killed CLI) leaves no LUN offline: the next process, and an explicit reconcile, put it back online at its file\'s size', async () => {
    const v = volume(32 * MiB);
    await env.backend.create(v, signal());
    const info = remember(await env.backend.initializeConnection(v, hostA, signal()));
    const file = path.join(env.dataDir, 'backend-tgt', 'luns', `${v.id}.img`);
    const tid = (await targets()).find((t) => t.iqn === info.data.target_iqn)?.tid;
    const lunOf = async () => (await targets()).find((t) => t.tid === tid)?.luns.find((l) => l.lun === 1);
    // What the killed extend did: the file grown, the LUN taken offline, the state not yet written.
    await truncate(file, 48 * MiB);
    await tgtadm(['--op', 'update', '--mode', 'logicalunit', '--tid', String(tid), '--lun', '1', '--params', 'online=0']);
    expect((await lunOf())?.online).toBe(false);
    // Before the fix every login then failed NOT READY and nothing put it back. The grown part is
    // kept (whether an initiator saw it cannot be told from tgtd's whole megabytes).
    await env.backendWith({}).exports?.();
    expect(await lunOf()).toMatchObject({ online: true, sizeMb: 50 });
    expect((await stat(file)).size).toBe(48 * MiB);
    const seen = await login(info, INITIATOR_A);
    expect(seen.exitCode).toBe(0);
    expect(seen.sizeBytes).toBe(48 * MiB);
    // The extend retried to that size is a no-op now (the record took the file's size).
    await env.backend.extend?.(v, 48 * MiB, signal());
    expect(JSON.parse(await readFile(path.join(env.dataDir, 'backend-tgt', 'state.json'), 'utf8')).volumes[v.id].sizeBytes).toBe(48 * MiB);

    // A process that has already made its first call (a long-running `berth serve`): its next
    // `exports()` (what `berth reconcile` asks) repairs it too.
    const running = env.backendWith({});
    await running.exports?.();
    await tgtadm(['--op', 'update', '--mode', 'logicalunit', '--tid', String(tid), '--lun', '1', '--params', 'online=0']);
    await running.exports?.();
    expect((await lunOf())?.online).toBe(true);
  });

  it('deletes a CHAP account no volume names (a create killed between making and binding it); others\' accounts stay', async () => {
    const leaked = 'berth-0123456789ab';
    const foreign = 'someone-else';
    await tgtadm(['--op', 'new', '--mode', 'account', '--user', leaked, '--password', 'leaked-secret-1']);
    await tgtadm(['--op', 'new', '--mode', 'account', '--user', foreign, '--password', 'foreign-secret-1']);
    try {
      const v = volume();
      await env.backend.create(v, signal());
      const own = (await env.backend.credentials?.(v))?.auth_username;
      await env.backendWith({}).exports?.();
      const accounts = (await tgtadm(['--op', 'show', '--mode', 'account'])).stdout;
      expect(accounts).not.toContain(leaked);
      expect(accounts).toContain(foreign);
      expect(accounts).toContain(String(own));
    } finally {
      await tgtadm(['--op', 'delete', '--mode', 'account', '--user', foreign]).catch(() => undefined);
      await tgtadm(['--op', 'delete', '--mode', 'account', '--user', leaked]).catch(() => undefined);
    }
  });

  it('a size past the file system\'s largest file (1 PiB on ext4: EFBIG) fails saying so, and leaves nothing', async () => {
    // ext4's magic (0xEF53): its largest file with 4 KiB blocks is 16 TiB. Elsewhere a 1 PiB sparse file may fit.
    if ((await statfs(env.dataDir)).type !== 0xef53) return;
    const v = volume(2 ** 50);
    const error = await env.backend.create(v, signal()).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.details.reason).toBe('file-too-large');
    expect(BerthError.is(error) && error.hint).toMatch(/cannot hold a file this large/);
    expect((await targets()).some((t) => t.iqn.endsWith(v.id))).toBe(false);
    expect(await readdir(path.join(env.dataDir, 'backend-tgt', 'luns'))).not.toContain(`${v.id}.img`);
  });

  it('`stopManagedTgtd` says a tgtd that left at once when asked was running (it said "was not running")', async () => {
    const other = await createTgtTestEnv();
    try {
      const v = volume();
      await other.backend.create(v, signal());
      await other.backend.delete(v, signal());
      expect((await daemonStatus(managedTgtdPaths(other.dataDir).pidFile)).running).toBe(true);
      const stopped = await stopManagedTgtd(other.dataDir, other.controlPort, { runner: other.runner });
      expect(stopped).toMatchObject({ wasRunning: true, killed: false });
      expect((await daemonStatus(managedTgtdPaths(other.dataDir).pidFile)).running).toBe(false);
    } finally {
      await other.dispose();
    }
  });
});

/** Run tgtadm on the suite's tgtd. */
function tgtadm(args: string[]) {
  return env.runner.run('tgtadm', ['-C', String(env.controlPort), '--lld', 'iscsi', ...args]);
}
