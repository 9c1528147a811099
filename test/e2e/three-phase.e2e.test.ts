import os from 'node:os';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { loopDevicesUnder } from '../support/loop-devices.js';
import { createTestBerth, linkTarget, type TestBerth } from '../support/test-berth.js';

const MiB = 1024 * 1024;
let t: TestBerth;

beforeEach(async () => {
  t = await createTestBerth();
});

afterEach(async () => {
  await t.cleanup();
});

describe('the three-phase attachments API (an outside orchestrator connects the volume itself)', () => {
  it('reserve → initialize with a connector → complete → delete, with the status recomputed at each step', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'tp', sizeBytes: 16 * MiB });
    await berth.createServer({ name: 's1' });
    const reserved = await berth.reserveAttachment({ volume: 'tp', server: 's1' });
    expect(reserved.attachment.status).toBe('reserved');
    expect(reserved.connectionInfo).toBeUndefined();
    expect((await berth.getVolume('tp')).status).toBe('reserved');

    const initialized = await berth.initializeAttachment(reserved.attachment.id, { host: os.hostname() });
    expect(initialized.attachment.status).toBe('attaching');
    expect(initialized.connectionInfo).toEqual({
      driver_volume_type: 'file',
      data: expect.objectContaining({ device_path: volume.providerLocation }),
    });
    expect((await berth.getVolume('tp')).status).toBe('attaching');

    const completed = await berth.completeAttachment(reserved.attachment.id);
    expect(completed.status).toBe('attached');
    expect((await berth.getVolume('tp')).status).toBe('in-use');
    // Completing twice is a conflict, not a silent write (Cinder's race).
    const again = await berth.completeAttachment(reserved.attachment.id).catch((e: unknown) => e);
    expect(BerthError.is(again) && again.code).toBe('CONFLICT');

    const after = await berth.deleteAttachment(reserved.attachment.id);
    expect(after.status).toBe('available');
    expect(await berth.listAttachments({ volume: 'tp' })).toEqual([]);
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });

  it('reserve with a connector initializes at once; a failing export leaves nothing reserved', async () => {
    const berth = await t.open();
    await berth.createVolume({ name: 'tp', sizeBytes: 16 * MiB });
    await berth.createServer({ name: 's1' });
    const both = await berth.reserveAttachment({ volume: 'tp', server: 's1', connector: { host: os.hostname() } });
    expect(both.attachment.status).toBe('attaching');
    expect(both.connectionInfo?.driver_volume_type).toBe('file');
    await berth.deleteAttachment(both.attachment.id);

    // The file backend refuses a connector from another host: the reservation is undone.
    const refused = await berth.reserveAttachment({ volume: 'tp', server: 's1', connector: { host: 'elsewhere' } }).catch((e: unknown) => e);
    expect(BerthError.is(refused) && refused.code).toBe('UNPROCESSABLE');
    expect((await berth.getVolume('tp')).status).toBe('available');
    expect(await berth.listAttachments({ volume: 'tp' })).toEqual([]);
  });

  it('refuses to delete an attachment berth itself connected: the hint names the detach, the device and its links stay', async () => {
    const berth = await t.open();
    const volume = await berth.createVolume({ name: 'tp', sizeBytes: 16 * MiB });
    await berth.createServer({ name: 's1' });
    const { attachment } = await berth.attach({ volume: 'tp', server: 's1' });
    const refused = await berth.deleteAttachment(attachment!.id).catch((e: unknown) => e);
    expect(BerthError.is(refused) && refused.code).toBe('CONFLICT');
    expect(BerthError.is(refused) && refused.hint).toBe('detach it instead: berth detach tp --server s1');
    expect((await berth.listAttachments({ volume: 'tp' }))[0]).toMatchObject({ id: attachment!.id, status: 'attached' });
    expect(loopDevicesUnder(t.dataDir)).toEqual([attachment!.device!.path]);
    expect(linkTarget(`/dev/berth/${volume.id}`)).toBe(attachment!.device!.path);
    await berth.detach({ volume: 'tp' });
    expect(loopDevicesUnder(t.dataDir)).toEqual([]);
  });
});
