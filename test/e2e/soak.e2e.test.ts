import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BerthError, recomputeVolumeStatus, type BerthService } from '@berth/core';
import { seededRandom } from '@berth/runtime';
import { OP_CHILD } from '../support/host-state.js';
import { loopDevicesBacking, loopDevicesUnder } from '../support/loop-devices.js';
import { createTestBerth, linkTarget, type TestBerth } from '../support/test-berth.js';

// A soak on the embedded default (file backend, loop transport, real loop devices): 500 random
// attach/detach/extend/delete(+create) operations over 20 volumes and 3 servers, run by four berth
// instances at once on one data dir, three of them with throw (and delay) faults armed at different
// points, plus a crash child after each round; then reconcile. The state must be consistent and
// nothing may leak. BERTH_SOAK_SEED replays a run; BERTH_SOAK_OPS changes its length.

const MiB = 1024 * 1024;
const OPS = Number(process.env.BERTH_SOAK_OPS ?? 500);
const SEED = Number(process.env.BERTH_SOAK_SEED ?? Math.floor(Math.random() * 2 ** 31));
const VOLUMES = 20;
const SERVERS = ['s1', 's2', 's3'];
const WORKERS = 4;
const ROUNDS = 5;
const INSTANCE_FAULTS = [
  '',
  'attach.connect.after=throw,detach.unpublish.after=throw,attach.reserve.after=delay:2',
  'loop.connect.after-losetup=throw,detach.terminate.before=throw,detach.begin_detaching.after=delay:2',
  'attach.publish.after=throw,loop.disconnect.before-detach=throw,attach.initialize.before=delay:3',
];
const CRASH_ATTACH = ['attach.initialize.after', 'attach.connect.after', 'loop.connect.after-losetup', 'attach.publish.after', 'attach.complete.before'];
const CRASH_DETACH = ['detach.unpublish.after', 'detach.disconnect.before', 'loop.disconnect.before-detach', 'detach.terminate.before', 'detach.delete_attachment.before'];
// What an operation may fail with here: a race lost (CONFLICT, NOT_FOUND) or an injected fault.
const EXPECTED_CODES = new Set(['CONFLICT', 'NOT_FOUND', 'INTERNAL', 'DRIVER_ERROR']);

let t: TestBerth;
let instances: BerthService[];

beforeAll(async () => {
  t = await createTestBerth();
  instances = [];
  for (const faults of INSTANCE_FAULTS) instances.push(await t.open(faults ? { BERTH_FAULTS: faults } : {}));
});

afterAll(async () => {
  await t?.cleanup();
});

describe('soak', () => {
  // The timeout only stops a hung run: how fast the soak goes on a busy machine is not what it proves
  // (it prints its time; speed goals live in bench/).
  it(`${OPS} random operations over ${VOLUMES} volumes and ${SERVERS.length} servers with faults, then reconcile: consistent, nothing leaked`, { timeout: 600_000 }, async () => {
    const started = Date.now();
    const random = seededRandom(SEED);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
    const plain = instances[0]!;
    const outcomes = new Map<string, number>();
    const unexpected: string[] = [];
    const count = (key: string): void => {
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
    };
    const names: string[] = [];
    let nextName = 0;
    for (const server of SERVERS) await plain.createServer({ name: server });
    for (let i = 0; i < VOLUMES; i += 1) {
      const name = `vol-${nextName++}`;
      await plain.createVolume({ name, sizeBytes: 8 * MiB });
      names.push(name);
    }

    const record = async (op: string, work: () => Promise<unknown>): Promise<void> => {
      try {
        await work();
        count(`${op} ok`);
      } catch (error) {
        const code = BerthError.is(error) ? error.code : 'UNEXPECTED';
        count(`${op} ${code}`);
        const message = error instanceof Error ? error.message : String(error);
        const injected = /fault injected/.test(message);
        if (!EXPECTED_CODES.has(code) || ((code === 'INTERNAL' || code === 'DRIVER_ERROR') && !injected)) {
          // SOAK_DEBUG=1 adds the cause's stack, to find where an unexpected error came from.
          const cause = process.env.SOAK_DEBUG ? ` ${String((error as Error & { cause?: Error }).cause?.stack)}` : '';
          unexpected.push(`${op}: ${code} ${message}${cause}`);
        }
      }
    };

    /**
     * Extend `name` to `sizeBytes`. Another worker may extend the same volume between this one's
     * read of its size and the call: berth then rightly refuses a size that is no longer larger
     * (VALIDATION) — here that is the two workers' conflict, counted as one.
     */
    const extendTo = async (berth: BerthService, name: string, sizeBytes: number): Promise<void> => {
      try {
        await berth.extendVolume(name, sizeBytes);
      } catch (error) {
        const now = BerthError.is(error) && error.code === 'VALIDATION' ? (await plain.getVolume(name).catch(() => undefined))?.sizeBytes : undefined;
        if (now === undefined || now < sizeBytes) throw error;
        throw new BerthError('CONFLICT', `another worker extended ${name} to ${now} bytes first`, { cause: error });
      }
    };

    const oneOp = async (): Promise<void> => {
      const name = pick(names);
      const berth = random() < 0.4 ? plain : pick(instances);
      const status = (await plain.getVolume(name).catch(() => undefined))?.status;
      const r = random();
      if (status === 'available') {
        if (r < 0.6) return record('attach', () => berth.attach({ volume: name, server: pick(SERVERS) }));
        if (r < 0.75) {
          return record('extend', async () => {
            const current = await plain.getVolume(name);
            await extendTo(berth, name, current.sizeBytes + MiB);
          });
        }
        if (r < 0.9) {
          return record('delete+create', async () => {
            await berth.deleteVolume(name);
            const fresh = `vol-${nextName++}`;
            await plain.createVolume({ name: fresh, sizeBytes: 8 * MiB });
            names[names.indexOf(name)] = fresh;
          });
        }
        return record('detach', () => berth.detach({ volume: name }));
      }
      if (status === 'in-use') {
        if (r < 0.8) return record('detach', () => berth.detach({ volume: name }));
        if (r < 0.9) return record('attach', () => berth.attach({ volume: name, server: pick(SERVERS) }));
        return record('extend', () => extendTo(berth, name, 64 * MiB));
      }
      if (status === 'error') return record('detach --force', () => berth.detach({ volume: name, force: true }));
      // Deleted meanwhile, or another worker's operation is in flight on it.
      return record('attach', () => berth.attach({ volume: name, server: pick(SERVERS) }));
    };

    const crashes: string[] = [];
    const perRound = Math.ceil(OPS / ROUNDS);
    let issued = 0;
    for (let round = 0; round < ROUNDS; round += 1) {
      const limit = Math.min(OPS, issued + perRound);
      await Promise.all(
        Array.from({ length: WORKERS }, async () => {
          while (issued < limit) {
            issued += 1;
            await oneOp();
          }
        }),
      );
      // A crash child: killed at a random point of an attach or a detach, then recovery.
      const name = pick(names);
      const status = (await plain.getVolume(name)).status;
      if (status === 'available' || status === 'in-use') {
        const command = status === 'available' ? 'attach' : 'detach';
        const point = pick(command === 'attach' ? CRASH_ATTACH : CRASH_DETACH);
        const child = spawnSync(process.execPath, [OP_CHILD, t.dataDir, command, name, pick(SERVERS)], {
          env: { ...process.env, BERTH_FAULTS: `${point}=crash`, BERTH_LOG_LEVEL: 'silent' },
          encoding: 'utf8',
          timeout: 60_000,
        });
        const recovered = await plain.recover!();
        crashes.push(`${command} ${name} at ${point}: ${child.signal === 'SIGKILL' ? 'killed' : child.stdout.trim()}, recovery ${recovered.map((o) => o.action).join(',') || 'none'}`);
        expect(child.signal).toBe('SIGKILL');
        expect(recovered).toHaveLength(1);
      }
    }
    const opsDone = Date.now();

    const report = await plain.reconcile!();
    const again = await plain.reconcile!({ dryRun: true });
    const elapsed = Date.now() - started;

    console.log(`\nsoak seed ${SEED}: ${issued} operations, ${WORKERS} workers, ${instances.length} instances, ${crashes.length} crash children, ${opsDone - started} ms`);
    for (const [key, n] of [...outcomes.entries()].sort()) console.log(`  ${key.padEnd(28)} ${n}`);
    for (const crash of crashes) console.log(`  crash: ${crash}`);
    console.log(`  reconcile: ${JSON.stringify(report.counts)}${report.differences.map((d) => `\n    ${d.kind} ${d.resource}: ${d.state} ${d.result ?? ''}`).join('')}`);
    const final = await plain.listVolumes();
    const byStatus = new Map<string, number>();
    for (const v of final) byStatus.set(v.status, (byStatus.get(v.status) ?? 0) + 1);
    console.log(`  final volumes: ${[...byStatus.entries()].map(([s, n]) => `${s} ${n}`).join(', ')}; total ${elapsed} ms`);

    expect(unexpected).toEqual([]);
    expect(issued).toBe(OPS);
    expect(report.counts.failed).toBe(0);
    expect(again.differences).toEqual([]);
    expect(await plain.listOperations({ state: 'running' })).toEqual([]);

    // Consistent: every status follows from the attachments, every attached volume has exactly its
    // loop device and link, every other loop device under the data dir belongs to an attachment
    // that is still being cleaned up (error_*), and nothing else exists.
    const attachments = await plain.listAttachments();
    const accounted = new Set<string>();
    expect(final).toHaveLength(VOLUMES);
    for (const volume of final) {
      const own = attachments.filter((a) => a.volumeId === volume.id);
      expect(volume.status).toBe(recomputeVolumeStatus(own));
      const devices = loopDevicesBacking(volume.providerLocation!);
      devices.forEach((d) => accounted.add(d));
      if (volume.status === 'in-use') {
        expect(own.map((a) => a.status)).toEqual(['attached']);
        expect(devices).toEqual([own[0]!.device!.path]);
        expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(own[0]!.device!.path);
      } else if (volume.status === 'available') {
        expect(devices).toEqual([]);
        expect(linkTarget(`/dev/berth/${volume.id}`)).toBeUndefined();
      } else {
        expect(volume.status).toBe('error');
        expect(own.every((a) => a.status.startsWith('error_'))).toBe(true);
      }
    }
    expect(loopDevicesUnder(t.dataDir).filter((d) => !accounted.has(d))).toEqual([]);

    // And it all comes apart cleanly: no loop device, link or volume file is left.
    for (const volume of final) {
      if (volume.status === 'error') await plain.detach({ volume: volume.id, force: true });
      else if (volume.status === 'in-use') await plain.detach({ volume: volume.id });
      await plain.deleteVolume(volume.id);
      expect(linkTarget(`/dev/berth/${volume.id}`)).toBeUndefined();
    }
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
    expect(readdirSync(path.join(t.dataDir, 'volumes'))).toEqual([]);
    expect(await plain.listAttachments()).toEqual([]);
  });
});
