// Issue 9's proof, kept in the repository: real faults against the built CLI, then the next
// command and reconcile, counting stuck volumes, leaked devices and wrong-device links (targets
// 0/0/0/0). `npm test` runs the short version (≥ 50 kills); `npm run faults` in this workspace the
// long one (BERTH_FAULTS_KILLS=500 and the --simulate iSCSI share). BERTH_FAULTS_SEED replays a run.
import { closeSync, mkdirSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BerthService, Store } from '@berth/core';
import { stopManagedTgtd } from '@berth/backend-tgt';
import { seededRandom } from '@berth/runtime';
import { makeSandbox, type BerthSandbox } from '../support/berth-cli.js';
import { detachLoopDevicesUnder, removeBerthLinks } from '../support/loop-devices.js';
import { sweepOrphanedSandboxes } from '../support/orphans.js';
import { freeControlPort, freePort } from '../support/ports.js';
import { afterFault, FaultTally, holdWriteLock, mountTmpfs, nextCommand, openReader, runCommand, unmountTmpfs, type CommandRun } from './fault-harness.js';

const KILLS = Number(process.env.BERTH_FAULTS_KILLS ?? 50);
const ISCSI_KILLS = Number(process.env.BERTH_FAULTS_ISCSI_KILLS ?? 2);
const LOCK_CYCLES = Number(process.env.BERTH_FAULTS_LOCK_CYCLES ?? 6);
const FULL_CYCLES = Number(process.env.BERTH_FAULTS_FULL_CYCLES ?? 6);
const SEED = Number(process.env.BERTH_FAULTS_SEED ?? Math.floor(Math.random() * 2 ** 31));
const pick = <T>(random: () => number, items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
// The four suites run at the same time (each on its own data dir, loop devices found free by
// losetup, its own tgtd ports; all the time is node starting a CLI, so two cores do twice the
// work): each draws from its own stream of the seed, so BERTH_FAULTS_SEED still replays each one.
const CONCURRENT = { concurrent: true } as const;
let suites = 0;
const MiB = 1024 * 1024;
// Long enough for the long run on a busy machine.
const TIMEOUT_MS = Math.max(900_000, (KILLS + ISCSI_KILLS) * 30_000);
const HOOK_TIMEOUT_MS = 300_000;

beforeAll(async () => {
  await sweepOrphanedSandboxes();
}, 120_000);

/** One fault suite's world: a sandbox (its own data dir), a read-only view of its database, the tally. */
interface Suite {
  sandbox: BerthSandbox;
  reader: Store;
  tally: FaultTally;
  /** Ids of this data dir's volumes and attachments (whose /dev/berth links are checked). */
  knownIds: Set<string>;
  /** This suite's stream of the seed. */
  random: () => number;
}

/**
 * Register the hooks of one fault suite: `prepare` runs on the new data dir (config written,
 * `setup` run through a berth opened there), and the table is printed and everything removed after.
 */
function faultSuite(
  title: string,
  options: {
    prepare?(dataDir: string): Promise<void> | void;
    setup(berth: BerthService, knownIds: Set<string>): Promise<void>;
    teardown?(dataDir: string): Promise<void> | void;
    simulate?: boolean;
  },
): () => Suite {
  let suite: Suite | undefined;
  let started = 0;
  const random = seededRandom(SEED + suites);
  suites += 1;
  beforeAll(async () => {
    started = Date.now();
    const sandbox = await makeSandbox();
    mkdirSync(sandbox.dataDir, { recursive: true });
    const knownIds = new Set<string>();
    suite = { sandbox, reader: undefined as unknown as Store, tally: new FaultTally(), knownIds, random };
    await options.prepare?.(sandbox.dataDir);
    const berth = await nextCommand(sandbox.dataDir, { ...(options.simulate ? { simulate: true } : {}) });
    try {
      await options.setup(berth, knownIds);
    } finally {
      await berth.close();
    }
    suite.reader = await openReader(sandbox.dataDir);
  }, HOOK_TIMEOUT_MS);
  afterAll(async () => {
    if (!suite) return;
    console.log(suite.tally.table(`${title} (seed ${SEED})`, Date.now() - started));
    await suite.reader?.close();
    await options.teardown?.(suite.sandbox.dataDir);
    await removeBerthLinks(suite.knownIds);
    await suite.sandbox.remove();
  }, HOOK_TIMEOUT_MS);
  return () => {
    if (!suite) throw new Error(`the ${title} suite did not set up (see the beforeAll error)`);
    return suite;
  };
}

/** The four counts every suite must end with at 0 (and what a second reconcile would still find). */
function expectClean(tally: FaultTally): void {
  expect(tally.stuckAfterNext).toEqual([]);
  expect(tally.stuckAfterReconcile).toEqual([]);
  expect(tally.leaked).toEqual([]);
  expect(tally.wrongLinks).toEqual([]);
  expect(tally.leftover).toEqual([]);
}

/** Per command kind, how long it ran after its operation row appeared (to aim the kills). */
class Aim {
  private readonly spans = new Map<string, number>();
  constructor(private readonly random: () => number) {}
  /** A kill delay: uniform over the span the command usually runs after its row appears. */
  delay(kind: string): number {
    return Math.floor(this.random() * 0.9 * (this.spans.get(kind) ?? 1500));
  }
  learn(kind: string, run: CommandRun): void {
    if (run.afterRowMs === undefined) return;
    const before = this.spans.get(kind);
    this.spans.set(kind, before === undefined ? run.afterRowMs : Math.round(before * 0.7 + run.afterRowMs * 0.3));
  }
}

/** The command a volume's state calls for: attach when it is free, detach when it is attached. */
function commandFor(status: string, volume: string, server?: string): { kind: string; args: string[] } | undefined {
  const on = server ? ['--server', server] : [];
  if (status === 'available') return { kind: 'attach', args: ['attach', volume, ...on] };
  if (status === 'in-use') return { kind: 'detach', args: ['detach', volume, ...on] };
  return undefined;
}

/** A volume of `suite` free to attach or detach, and the command for it. */
async function nextPlainCommand(suite: Suite, prefix: string): Promise<{ kind: string; args: string[] }> {
  const volume = pick(suite.random, (await suite.reader.volumes.list()).filter((v) => v.name.startsWith(prefix) && (v.status === 'available' || v.status === 'in-use')));
  return commandFor(volume.status, volume.name)!;
}

describe('random SIGKILL of the CLI', CONCURRENT, () => {
  let s2 = '';
  const suite = faultSuite('random SIGKILL of the CLI', {
    async setup(berth, knownIds) {
      for (const name of ['p0', 'p1', 'p2', 'p3']) knownIds.add((await berth.createVolume({ name, sizeBytes: 8 * MiB })).id);
      knownIds.add((await berth.createVolume({ name: 'm', sizeBytes: 8 * MiB, multiattach: true })).id);
      await berth.createServer({ name: 's1' });
      s2 = (await berth.createServer({ name: 's2' })).id;
      // The other user of the multiattach volume: its device must survive everything done to s2's.
      knownIds.add((await berth.attach({ volume: 'm', server: 's1' })).attachment!.id);
    },
  });

  it(`${KILLS} random SIGKILLs across attach, detach and multiattach: 0 stuck, 0 leaked, 0 wrong-device links`, async () => {
    const { sandbox, reader, tally, knownIds, random } = suite();
    const aim = new Aim(random);
    let cycles = 0;
    while (tally.kills < KILLS && cycles < KILLS * 4) {
      cycles += 1;
      let command: { kind: string; args: string[] };
      if (random() < 0.3) {
        const m = (await reader.volumes.list()).find((v) => v.name === 'm')!;
        const onS2 = (await reader.attachments.list({ volumeId: m.id, serverId: s2 })).some((a) => a.status === 'attached');
        command = onS2 ? { kind: 'multi-detach', args: ['detach', 'm', '--server', 's2'] } : { kind: 'multi-attach', args: ['attach', 'm', '--server', 's2'] };
      } else {
        command = await nextPlainCommand(suite(), 'p');
      }
      // Every fifth command runs to its end: it keeps the aim true and the volumes moving.
      const kill = cycles % 5 !== 0;
      const run = await runCommand(sandbox, reader, command.args, kill ? { killAfterRowMs: aim.delay(command.kind) } : {});
      aim.learn(command.kind, run);
      tally.record(command.kind, run);
      await afterFault(tally, `cycle ${cycles} (${command.args.join(' ')}${run.killed ? ` killed at ${run.killedAt}` : ''})`, sandbox.dataDir, knownIds);
      // The other attachment of the multiattach volume is untouched whatever happened to s2's.
      const m = (await reader.volumes.list()).find((v) => v.name === 'm')!;
      if (!(await reader.attachments.list({ volumeId: m.id })).some((a) => a.status === 'attached' && a.serverId !== s2)) {
        tally.stuckAfterReconcile.push(`cycle ${cycles}: volume m lost its s1 attachment`);
      }
    }
    expect(tally.kills).toBeGreaterThanOrEqual(KILLS);
    expectClean(tally);
  }, TIMEOUT_MS);
});

describe('another process holding the database write lock past the busy timeout', CONCURRENT, () => {
  const suite = faultSuite('lock holder', {
    // A short busy timeout: the lock outlives it and berth has to retry (or fail cleanly).
    prepare: (dataDir) => writeFileSync(path.join(dataDir, 'config.json'), JSON.stringify({ store: { kind: 'sqlite', busyTimeoutMs: 250 } })),
    async setup(berth, knownIds) {
      for (const name of ['l0', 'l1']) knownIds.add((await berth.createVolume({ name, sizeBytes: 8 * MiB })).id);
    },
  });

  it(`${LOCK_CYCLES} commands with the write lock held for 0.2-3 s at a random moment: each ends cleanly, then 0 stuck`, async () => {
    const { sandbox, reader, tally, knownIds, random } = suite();
    for (let cycle = 1; cycle <= LOCK_CYCLES; cycle += 1) {
      const command = await nextPlainCommand(suite(), 'l');
      const holdMs = 200 + Math.floor(random() * 2800);
      const waitMs = Math.floor(random() * 400);
      let holder: Promise<{ released: Promise<void> }> | undefined;
      const run = await runCommand(sandbox, reader, command.args, {
        onRow: () => {
          holder = new Promise((resolve) => setTimeout(resolve, waitMs)).then(() => holdWriteLock(sandbox.dataDir, holdMs));
        },
      });
      await (await holder)?.released;
      tally.record(`${command.kind} (lock held ${holdMs} ms)`, run);
      // A command either finishes or fails with the lock's own error: never anything unexpected.
      if (run.exitCode !== 0) expect(['TIMEOUT'], `${command.args.join(' ')} exited ${run.exitCode} ${run.errorCode}`).toContain(run.errorCode);
      await afterFault(tally, `lock cycle ${cycle}`, sandbox.dataDir, knownIds);
    }
    expectClean(tally);
  }, TIMEOUT_MS);
});

describe('a data dir on a disk that fills up', CONCURRENT, () => {
  let mounted: string | undefined;
  const suite = faultSuite('disk full', {
    prepare(dataDir) {
      mountTmpfs(dataDir, 24);
      mounted = dataDir;
    },
    async setup(berth, knownIds) {
      for (const name of ['f0', 'f1']) knownIds.add((await berth.createVolume({ name, sizeBytes: 4 * MiB })).id);
    },
    async teardown() {
      if (!mounted) return;
      await detachLoopDevicesUnder(mounted);
      unmountTmpfs(mounted);
    },
  });

  /** Write zeros until the tmpfs is full. */
  function fill(file: string): void {
    const fd = openSync(file, 'a');
    const chunk = Buffer.alloc(256 * 1024);
    try {
      for (;;) writeSync(fd, chunk);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
    } finally {
      closeSync(fd);
    }
  }

  it(`${FULL_CYCLES} commands on a full disk: each fails with the disk-full error or works, reads keep working, then 0 stuck`, async () => {
    const { sandbox, reader, tally, knownIds, random } = suite();
    const filler = path.join(sandbox.dataDir, 'filler');
    for (let cycle = 1; cycle <= FULL_CYCLES; cycle += 1) {
      const command = await nextPlainCommand(suite(), 'f');
      const before = random() < 0.5;
      if (before) fill(filler);
      const run = await runCommand(sandbox, reader, command.args, before ? {} : { onRow: () => fill(filler) });
      tally.record(`${command.kind} (disk filled ${before ? 'before' : 'during'})`, run);
      if (run.exitCode !== 0) expect(['HOST_UNSUPPORTED', 'TIMEOUT'], `${command.args.join(' ')} exited ${run.exitCode} ${run.errorCode}`).toContain(run.errorCode);
      if (cycle <= 2) {
        // What people look at keeps working on a full disk.
        const list = await sandbox.run(['volume', 'list', '--json']);
        expect(list.exitCode, list.stderr).toBe(0);
        expect((JSON.parse(list.stdout) as unknown[]).length).toBe(2);
      }
      rmSync(filler, { force: true });
      await afterFault(tally, `full cycle ${cycle}`, sandbox.dataDir, knownIds);
    }
    expectClean(tally);
  }, TIMEOUT_MS);
});

describe.runIf(ISCSI_KILLS > 0)('random SIGKILL of berth --simulate (tgt over iSCSI on the simulated host)', CONCURRENT, () => {
  // A control port nobody answers on (probed), not one derived from the pid: another run's tgtd
  // may hold any number, and a tgtadm aimed at it would act on that run's targets.
  let controlPort = 0;
  const suite = faultSuite('random SIGKILL of berth --simulate', {
    simulate: true,
    async prepare(dataDir) {
      controlPort = await freeControlPort();
      const portal = `127.0.0.1:${await freePort()}`;
      writeFileSync(path.join(dataDir, 'config.json'), JSON.stringify({ pluginOptions: { '@berth/backend-tgt': { portals: [portal], controlPort } } }));
    },
    async setup(berth, knownIds) {
      knownIds.add((await berth.createVolume({ name: 't0', sizeBytes: 16 * MiB, backend: 'tgt' })).id);
    },
    async teardown(dataDir) {
      await suite().sandbox.run(['simulate', 'stop', '--force']).catch(() => undefined);
      if (controlPort !== 0) await stopManagedTgtd(dataDir, controlPort).catch(() => undefined);
    },
  });

  it(`${ISCSI_KILLS} random SIGKILLs of --simulate attach and detach: 0 stuck, 0 leaked, 0 wrong-device links`, async () => {
    const { sandbox, reader, tally, knownIds, random } = suite();
    const aim = new Aim(random);
    let cycles = 0;
    while (tally.kills < ISCSI_KILLS && cycles < ISCSI_KILLS * 4) {
      cycles += 1;
      const volume = (await reader.volumes.list()).find((v) => v.name === 't0')!;
      const command = commandFor(volume.status, 't0');
      if (!command) continue;
      const kill = cycles % 4 !== 0;
      const run = await runCommand(sandbox, reader, ['--simulate', ...command.args], kill ? { killAfterRowMs: aim.delay(command.kind) } : {});
      aim.learn(command.kind, run);
      tally.record(`iscsi ${command.kind}`, run);
      await afterFault(tally, `iscsi cycle ${cycles} (${command.args.join(' ')}${run.killed ? ` killed at ${run.killedAt}` : ''})`, sandbox.dataDir, knownIds, { simulate: true });
    }
    expect(tally.kills).toBeGreaterThanOrEqual(ISCSI_KILLS);
    expectClean(tally);
  }, TIMEOUT_MS);
});
