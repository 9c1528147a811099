import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { createHostFs } from '@berth/host';
import { MultipathClient, readFindMultipaths } from './multipath-client.js';
import { ReplayRunner, type Reply } from './test-replay-runner.js';

// Replies follow KERNEL-MODEL §5 (multipath-tools 0.9.4): `multipath` exits 0 or 1 and logs with
// a `<secs>.<usecs> | ` prefix; `multipathd` prints its reply (`ok` for an empty one) and exits 1
// only for `fail` or, silently, when it cannot reach the daemon.

const WWID = '360000000000000000e00000000010001';
const FAST = { attempts: 3, baseDelayMs: 1, maxDelayMs: 2 };

function scripted(table: Record<string, Reply | Reply[]>): ReplayRunner {
  const seen = new Map<string, number>();
  return new ReplayRunner((args, call) => {
    const line = [call.file, ...args].join(' ');
    const entry = table[line];
    if (entry === undefined) throw new Error(`no reply scripted for: ${line}`);
    if (!Array.isArray(entry)) return entry;
    const n = seen.get(line) ?? 0;
    seen.set(line, n + 1);
    return entry[Math.min(n, entry.length - 1)] ?? {};
  });
}

async function failure(promise: Promise<unknown>): Promise<BerthError> {
  const outcome = await promise.then(
    () => undefined,
    (error: unknown) => error,
  );
  if (!BerthError.is(outcome)) throw new Error(`expected a BerthError, got ${String(outcome)}`);
  return outcome;
}

describe('MultipathClient', () => {
  it('daemonState: running with its status, not running (rc 1, silent), not installed', async () => {
    const up = scripted({ 'multipathd show status': { stdout: 'path checker states:\nup                  2\n\npaths: 2\nbusy: False\n' } });
    expect(await new MultipathClient({ runner: up }).daemonState()).toEqual({
      state: 'running',
      status: { checkerStates: { up: 2 }, paths: 2, busy: false },
    });
    const down = scripted({ 'multipathd show status': { exitCode: 1 } });
    const state = await new MultipathClient({ runner: down }).daemonState();
    expect(state.state).toBe('not-running');
    const missing = scripted({ 'multipathd show status': { exitCode: -1, notFound: true } });
    expect((await new MultipathClient({ runner: missing }).daemonState()).state).toBe('not-installed');
  });

  it('addWwid: `multipath -a W` must confirm with `wwid \'W\' added`', async () => {
    const ok = scripted({ [`multipath -a ${WWID}`]: { stdout: `wwid '${WWID}' added\n` } });
    await new MultipathClient({ runner: ok }).addWwid(WWID);
    expect(ok.calls.map((c) => c.args)).toEqual([['-a', WWID]]);
    const bad = scripted({ [`multipath -a ${WWID}`]: { exitCode: 1, stderr: `1.2 | failed adding '${WWID}' to wwids file\n` } });
    const error = await failure(new MultipathClient({ runner: bad }).addWwid(WWID));
    expect(error.code).toBe('COMMAND_FAILED');
    expect(error.message).toContain(`failed adding '${WWID}' to wwids file`);
    expect(error.message).not.toContain('1.2 |');
  });

  it('refuses a wwid or map name that an option parser could read as a flag', async () => {
    const runner = scripted({});
    const client = new MultipathClient({ runner });
    expect((await failure(client.addWwid('-f'))).code).toBe('VALIDATION');
    expect((await failure(client.flushMap('--help'))).code).toBe('VALIDATION');
    expect((await failure(client.addPath('../sda'))).code).toBe('VALIDATION');
    expect(runner.calls).toEqual([]);
  });

  it('addPath: `multipathd add path /dev/sdX`; ok, blacklisted, fail', async () => {
    const runner = scripted({
      'multipathd add path /dev/sdb': { stdout: 'ok\n' },
      'multipathd add path /dev/sdc': { stdout: 'blacklisted\n' },
      'multipathd add path /dev/sdd': { exitCode: 1, stdout: 'fail\n' },
    });
    const client = new MultipathClient({ runner });
    expect(await client.addPath('sdb')).toBe('added');
    expect(await client.addPath('/dev/sdc')).toBe('blacklisted');
    const error = await failure(client.addPath('sdd'));
    expect(error.code).toBe('COMMAND_FAILED');
    expect(error.message).toContain('fail');
  });

  it('a multipathd that cannot reach its daemon (rc 1, no output) is HOST_UNSUPPORTED with the fix', async () => {
    const runner = scripted({ 'multipathd add path /dev/sdb': { exitCode: 1 } });
    const error = await failure(new MultipathClient({ runner }).addPath('sdb'));
    expect(error.code).toBe('HOST_UNSUPPORTED');
    expect(error.hint).toContain('systemctl start multipathd');
  });

  it('mapUsability: `multipath -C dm-N`', async () => {
    const runner = scripted({
      'multipath -C dm-0': {},
      'multipath -C dm-1': { exitCode: 1, stderr: '3.4 | dm-1: no usable paths found\n' },
      'multipath -C dm-2': { exitCode: 1, stderr: 'multipath: invalid option -- \'C\'\nUsage: multipath [-v level] ...\n' },
    });
    const client = new MultipathClient({ runner });
    expect(await client.mapUsability('dm-0')).toEqual({ usable: true });
    expect(await client.mapUsability('/dev/dm-1')).toEqual({ usable: false, detail: 'dm-1: no usable paths found' });
    expect((await client.mapUsability('dm-2')).usable).toBe('unknown');
  });

  it('flushMap: retries a map in use, then succeeds; a missing map is absent', async () => {
    const runner = scripted({
      [`multipath -f ${WWID}`]: [{ exitCode: 1, stderr: `5.6 | ${WWID}: map in use\n` }, {}],
      'multipath -f gone': { exitCode: 1, stderr: '7.8 | gone is not a multipath device\n' },
    });
    const client = new MultipathClient({ runner });
    const retries: number[] = [];
    expect(await client.flushMap(WWID, { retry: FAST, onRetry: (e) => retries.push(e.attempt) })).toBe('flushed');
    expect(retries).toEqual([1]);
    expect(await client.flushMap('gone', { retry: FAST })).toBe('absent');
  });

  it('flushMap: gives up after the bounded retries with the reason and a hint', async () => {
    const runner = scripted({ [`multipath -f ${WWID}`]: { exitCode: 1, stderr: `5.6 | ${WWID}: map in use\n` } });
    const error = await failure(new MultipathClient({ runner }).flushMap(WWID, { retry: FAST }));
    expect(runner.calls).toHaveLength(3);
    expect(error.message).toContain('map in use');
    expect(error.hint).toContain(`multipath -f ${WWID}`);
  });

  it('flushMap: stops at the signal', async () => {
    const runner = scripted({ [`multipath -f ${WWID}`]: { exitCode: 1, stderr: 'map in use\n' } });
    const controller = new AbortController();
    controller.abort(new BerthError('TIMEOUT', 'deadline'));
    const error = await failure(new MultipathClient({ runner }).flushMap(WWID, { retry: FAST, signal: controller.signal }));
    expect(error.code).toBe('TIMEOUT');
    expect(runner.calls).toHaveLength(0);
  });

  it('delMap, delPath and pathDevices', async () => {
    const runner = scripted({
      [`multipathd del map ${WWID}`]: { stdout: 'ok\n' },
      'multipathd del map other': { exitCode: 1, stdout: 'fail\n' },
      'multipathd del path /dev/sdb': { stdout: 'ok\n' },
      'multipathd del path /dev/sdc': { exitCode: 1, stdout: 'fail\n' },
      'multipathd show paths raw format %d': ['sdb\nsdc\n', 'ok\n'].map((stdout) => ({ stdout })),
    });
    const client = new MultipathClient({ runner });
    expect(await client.delMap(WWID)).toBe('deleted');
    expect(await client.delMap('other')).toBe('failed');
    expect(await client.delPath('sdb')).toBe('deleted');
    expect(await client.delPath('sdc')).toBe('absent');
    expect(await client.pathDevices()).toEqual(['sdb', 'sdc']);
    expect(await client.pathDevices()).toEqual([]);
  });
});

describe('readFindMultipaths', () => {
  let root: string | undefined;
  afterEach(async () => {
    if (root !== undefined) await rm(root, { recursive: true, force: true });
    root = undefined;
  });

  it('prefers `multipath -t`, then /etc/multipath.conf, then the default strict', async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'berth-iscsi-mpconf-'));
    const fs = createHostFs(root);
    const fromTool = scripted({ 'multipath -t': { stdout: 'defaults {\n\tfind_multipaths "greedy"\n}\n' } });
    expect(await readFindMultipaths({ client: new MultipathClient({ runner: fromTool }), fs })).toEqual({ value: 'greedy', source: 'multipath -t' });

    const noTool = scripted({ 'multipath -t': { exitCode: -1, notFound: true } });
    expect(await readFindMultipaths({ client: new MultipathClient({ runner: noTool }), fs })).toEqual({ value: 'strict', source: 'default' });

    await mkdir(path.join(root, 'etc'), { recursive: true });
    await writeFile(path.join(root, 'etc/multipath.conf'), 'defaults {\n    find_multipaths no\n}\n');
    expect(await readFindMultipaths({ client: new MultipathClient({ runner: noTool }), fs })).toEqual({ value: 'no', source: '/etc/multipath.conf' });
  });
});
