import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BerthError, FaultInjector, type BackendVolume, type Connector, type VolumeBackend } from '@berth/core';
import { createTgtBackend } from './backend-tgt.js';
import { parseTargetList } from './tgtadm-show-parser.js';
import { collectingLogger, createTgtTestEnv, type TgtTestEnv } from './test-tgt-env.js';

// The tgt backend's fault points: after a target is created, after an initiator's ACL is bound.

const MiB = 1024 * 1024;
const HOST: Connector = { host: 'host-f', initiator: 'iqn.2026-11.io.berth.test:host-f' };
let env: TgtTestEnv;

beforeAll(async () => {
  env = await createTgtTestEnv();
}, 30_000);

afterAll(async () => {
  await env?.dispose();
}, 30_000);

function backendWithFaults(spec: Record<string, string>): VolumeBackend {
  return createTgtBackend({
    host: env.host,
    dataDir: env.dataDir,
    options: { portals: env.portals, controlPort: env.controlPort },
    logger: collectingLogger(env.logs),
    faults: new FaultInjector(spec),
  });
}

async function targets() {
  const result = await env.runner.run('tgtadm', ['-C', String(env.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target'], { timeoutMs: 10_000 });
  return parseTargetList(result.stdout);
}

function volume(): BackendVolume {
  return { id: randomUUID(), name: 'f', sizeBytes: 32 * MiB, providerLocation: null };
}

async function failureOf(promise: Promise<unknown>): Promise<BerthError> {
  const outcome = await promise.then(
    () => undefined,
    (error: unknown) => error,
  );
  if (!BerthError.is(outcome)) throw new Error(`expected a BerthError, got ${String(outcome)}`);
  return outcome;
}

describe('tgt backend fault points', () => {
  it('a failure after the target was created undoes the create: no target, no LUN file', async () => {
    const v = volume();
    const error = await failureOf(backendWithFaults({ 'tgt.create.after-target': 'throw' }).create(v, AbortSignal.timeout(20_000)));
    expect(error.message).toContain('fault injected at tgt.create.after-target');
    expect((await targets()).filter((t) => t.iqn.endsWith(v.id))).toEqual([]);
    expect(existsSync(path.join(env.dataDir, 'backend-tgt', 'luns', `${v.id}.img`))).toBe(false);
    // A retry makes the volume.
    const created = await env.backend.create(v, AbortSignal.timeout(20_000));
    expect(created.providerLocation).toMatch(new RegExp(`${v.id}$`));
    await env.backend.delete({ ...v, providerLocation: created.providerLocation }, AbortSignal.timeout(20_000));
  });

  it('a failure after the ACL was bound leaves an export no record keeps; it shows in exports() and terminateConnection removes it', async () => {
    const v = volume();
    v.providerLocation = (await env.backend.create(v, AbortSignal.timeout(20_000))).providerLocation;
    const faulty = backendWithFaults({ 'tgt.initialize.after-acl': 'throw' });
    await faulty.exports!();
    await failureOf(faulty.initializeConnection(v, HOST, AbortSignal.timeout(20_000)));
    expect((await targets()).find((t) => t.iqn === v.providerLocation)?.acls).toEqual([HOST.initiator]);
    // What `berth reconcile` reads: the export is there, for this initiator.
    expect((await env.backend.exports!()).filter((e) => e.volumeId === v.id)).toEqual([{ volumeId: v.id, initiator: HOST.initiator }]);
    await env.backend.terminateConnection(v, HOST, AbortSignal.timeout(20_000));
    expect((await targets()).find((t) => t.iqn === v.providerLocation)?.acls).toEqual([]);
    await env.backend.delete(v, AbortSignal.timeout(20_000));
  });
});
