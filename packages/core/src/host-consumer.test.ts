import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createHostFs, type HostFs } from '@berth/host';
import { BerthError } from './errors.js';
import { attachmentLinkPath, attachmentLinks, failUnreachedPublish, stableLinkPath } from './host-consumer.js';

// What a guest consumer does when its publish never reached the guest: `untouched` only when this
// call is the attachment's first publish, and then none of the names it made or re-pointed stay.

const roots: string[] = [];
afterEach(async () => {
  for (const root of roots.splice(0)) await rm(root, { recursive: true, force: true });
});

async function hostFs(): Promise<HostFs> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'berth-host-consumer-'));
  roots.push(root);
  return createHostFs(root);
}

const attachment = { id: '11111111-1111-4111-8111-111111111111', volumeId: '22222222-2222-4222-8222-222222222222' };
const device = { path: '/dev/loop7' };
const unreached = () => new BerthError('TIMEOUT', 'no QMP greeting', { hint: 'close the other client', details: { untouched: true } });

async function publishLinks(fs: HostFs): Promise<void> {
  await fs.symlink(device.path, attachmentLinkPath(attachment.id));
  await fs.symlink(device.path, stableLinkPath(attachment.volumeId));
}

describe('failUnreachedPublish', () => {
  it('a first publish: the links it made go, the error stays untouched', async () => {
    const fs = await hostFs();
    const before = await attachmentLinks(fs, attachment);
    await publishLinks(fs);
    const error = await failUnreachedPublish(fs, attachment, device, before, unreached()).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.details.untouched).toBe(true);
    expect(await fs.readlink(attachmentLinkPath(attachment.id))).toBeUndefined();
    expect(await fs.readlink(stableLinkPath(attachment.volumeId))).toBeUndefined();
  });

  it('a stale volume name it re-pointed at the device goes; one another attachment shares (already there) stays', async () => {
    const fs = await hostFs();
    await fs.symlink('/dev/loop3', stableLinkPath(attachment.volumeId));
    const stale = await attachmentLinks(fs, attachment);
    await publishLinks(fs);
    await failUnreachedPublish(fs, attachment, device, stale, unreached()).catch(() => undefined);
    expect(await fs.readlink(stableLinkPath(attachment.volumeId))).toBeUndefined();

    await fs.symlink(device.path, stableLinkPath(attachment.volumeId));
    const shared = await attachmentLinks(fs, attachment);
    await publishLinks(fs);
    await failUnreachedPublish(fs, attachment, device, shared, unreached()).catch(() => undefined);
    expect(await fs.readlink(stableLinkPath(attachment.volumeId))).toBe(device.path);
    expect(await fs.readlink(attachmentLinkPath(attachment.id))).toBeUndefined();
  });

  it('a re-run (its own link there before: an earlier publish may have plugged the disk): links kept, the error is no longer untouched', async () => {
    const fs = await hostFs();
    await publishLinks(fs);
    const before = await attachmentLinks(fs, attachment);
    const error = await failUnreachedPublish(fs, attachment, device, before, unreached()).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('TIMEOUT');
    expect(BerthError.is(error) && error.details.untouched).toBeUndefined();
    expect(BerthError.is(error) && error.hint).toBe('close the other client');
    expect(await fs.readlink(attachmentLinkPath(attachment.id))).toBe(device.path);
    expect(await fs.readlink(stableLinkPath(attachment.volumeId))).toBe(device.path);
  });

  it('any other error passes as it is, touching nothing', async () => {
    const fs = await hostFs();
    const before = await attachmentLinks(fs, attachment);
    await publishLinks(fs);
    const other = new BerthError('DRIVER_ERROR', 'device_add refused');
    expect(await failUnreachedPublish(fs, attachment, device, before, other).catch((e: unknown) => e)).toBe(other);
    expect(await fs.readlink(attachmentLinkPath(attachment.id))).toBe(device.path);
  });
});
