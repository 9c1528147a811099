import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger, type BerthService } from '@berth/core';
import { openBerth } from '@berth/runtime';
import { crashChild } from '../support/host-state.js';
import { createSimIscsiBerth, type SimIscsiBerth } from '../support/sim-iscsi-berth.js';

// Recovery acts only on the host root an operation connected on: a `berth --simulate attach`
// killed after its iSCSI login leaves a session on the simulated host. A plain berth opening the
// same data dir runs the iSCSI transport on the machine, whose "undo" would be a no-op success
// that leaves the simulated session up: it must leave the operation alone (owner included), and
// the simulated berth then rolls it back.

const MiB = 1024 * 1024;

describe('recovery of an operation made on another host root', () => {
  let env: SimIscsiBerth;

  beforeAll(async () => {
    env = await createSimIscsiBerth();
    const berth = await env.open();
    await berth.createVolume({ name: 'v', sizeBytes: 32 * MiB });
    await berth.close();
  }, 120_000);

  afterAll(async () => {
    await env?.cleanup();
  }, 120_000);

  async function simSessions(): Promise<number> {
    const { SimulatedHost } = await import('@berth/simhost');
    const sim = await SimulatedHost.connect(env.root);
    return (await sim.state()).sessions.length;
  }

  it('a plain berth leaves a killed --simulate attach untouched and says why; the simulated berth rolls it back', async () => {
    expect(crashChild(env.dataDir, 'attach', 'iscsi.connect.after-login', { env: env.childEnv, timeoutMs: 90_000 })).toBe('killed');
    expect(await simSessions()).toBe(1);

    let plain: BerthService | undefined;
    try {
      plain = await openBerth({ dataDir: env.dataDir, env: {}, logger: silentLogger, simulate: false });
      const [before] = await plain.listOperations({ state: 'running' });
      expect(before).toMatchObject({ kind: 'attach', state: 'running' });
      const outcomes = await plain.recover!();
      expect(outcomes).toEqual([expect.objectContaining({ operationId: before!.id, action: 'skipped' })]);
      expect(outcomes[0]!.detail).toContain(`was made on host root ${env.root}`);
      expect(outcomes[0]!.detail).toContain('--simulate');
      // Nothing run, nothing written: the operation (its owner too) and the simulated session stand.
      expect(await plain.listOperations({ state: 'running' })).toEqual([before]);
      expect(await simSessions()).toBe(1);
      const doctor = await plain.doctor();
      expect(doctor).toContainEqual({ kind: 'operation', name: before!.id, result: expect.objectContaining({ ok: false, fix: expect.stringContaining('--simulate') }) });
    } finally {
      await plain?.close();
    }

    const simulated = await env.open();
    expect(await simulated.listOperations({ state: 'running' })).toEqual([]);
    const [op] = await simulated.listOperations();
    expect(op?.state).toBe('rolled_back');
    expect((await simulated.getVolume('v')).status).toBe('available');
    expect(await simulated.listAttachments({ volume: 'v' })).toEqual([]);
    expect(await simSessions()).toBe(0);
    expect(env.nodeRecords()).toEqual([]);
    expect(env.leftovers()).toEqual({ loops: [], mounts: [], qsd: [] });
    await simulated.close();
  });
});
