import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeConsumerConformance } from '@berth/testkit/conformance';
import { attachmentLinkPath, BerthError, silentLogger, stableLinkPath, type Server } from '@berth/core';
import { createHostServices } from '@berth/host';
import { bootLibvirtGuest, guestSerial, guestServer, LoopVolumes, type LibvirtGuest } from '@berth/vmkit';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { diskAlias } from './disk-xml.js';
import { createLibvirtConsumer, type LibvirtConsumer } from './libvirt-consumer.js';
import { closeLibvirtConnections } from './virsh.js';

const host = createHostServices();
const SEE_MS = 60_000;

describe('the libvirt consumer against a real transient domain (QEMU TCG under libvirtd)', () => {
  let guest: LibvirtGuest;
  let volumes: LoopVolumes;
  let consumer: LibvirtConsumer;
  let server: Server;
  const volume = () => volumes.make();

  beforeAll(async () => {
    volumes = await LoopVolumes.create(host, 'berth-consumer-libvirt-');
    guest = await bootLibvirtGuest({ runner: host.runner });
    server = guestServer('web-1', { type: 'libvirt', domain: guest.domain, uri: guest.uri });
    consumer = createLibvirtConsumer({ host, dataDir: volumes.dir, options: { unplugTimeoutMs: 60_000 }, logger: silentLogger });
  });

  afterAll(async () => {
    try {
      await guest?.stop();
    } finally {
      await volumes?.cleanup();
    }
  });

  it('attach-device --live: the guest sees a virtio disk with serial = volume id; its writes land in the file; detach leaves nothing in the domain', async () => {
    const v = await volume();
    const attachment = v.attachment(server);
    const published = await consumer.publish(server, v.device, attachment);
    expect(published).toEqual({ path: attachmentLinkPath(attachment.id), guestDevice: '/dev/vda', serial: v.volumeId });
    const name = await guest.agent.waitForDisk(v.volumeId, SEE_MS);
    expect((await guest.agent.disks()).find((d) => d.name === name)).toEqual({ name, serial: guestSerial(v.volumeId), sizeBytes: 64 * 2 ** 20, readOnly: false });
    expect(await consumer.guestDisks(server)).toEqual([{ serial: v.volumeId, id: diskAlias(v.volumeId), guestDevice: '/dev/vda', plugged: true }]);
    expect(await consumer.publish(server, v.device, attachment)).toEqual(published);

    const pattern = `libvirt-${v.volumeId.slice(0, 8)}`;
    await guest.agent.writePattern(v.volumeId, 3 * 1_048_576 + 7, pattern);
    await consumer.unpublish(server, attachment);
    expect(await guest.agent.disks()).toEqual([]);
    expect(await consumer.guestDisks(server)).toEqual([]);
    expect(await host.fs.exists(stableLinkPath(v.volumeId))).toBe(false);
    await consumer.unpublish(server, attachment);

    await v.disconnect();
    expect(await v.read(3 * 1_048_576 + 7, pattern.length)).toBe(pattern);
  });

  it('a read-only attachment is <readonly/>: the guest sees ro', async () => {
    const v = await volume();
    const attachment = v.attachment(server, 'ro');
    await consumer.publish(server, v.device, attachment);
    const name = await guest.agent.waitForDisk(v.volumeId, SEE_MS);
    expect((await guest.agent.disks()).find((d) => d.name === name)?.readOnly).toBe(true);
    await consumer.unpublish(server, attachment);
    expect(await guest.agent.disks()).toEqual([]);
    await v.disconnect();
  });

  it('over virsh processes (rpc: false) and after the RPC connection broke (as a libvirtd restart breaks it): the same attach and detach', async () => {
    const viaVirsh = createLibvirtConsumer({ host, dataDir: volumes.dir, options: { rpc: false }, logger: silentLogger });
    const v = await volume();
    const attachment = v.attachment(server);
    const published = await viaVirsh.publish(server, v.device, attachment);
    await guest.agent.waitForDisk(v.volumeId, SEE_MS);
    expect(await consumer.guestDisks(server)).toEqual([{ serial: v.volumeId, id: diskAlias(v.volumeId), guestDevice: published.guestDevice, plugged: true }]);
    closeLibvirtConnections();
    // The RPC consumer reconnects: it finds the disk plugged (alias taken) and unplugs it.
    expect(await consumer.publish(server, v.device, attachment)).toEqual(published);
    closeLibvirtConnections();
    await consumer.unpublish(server, attachment);
    expect(await guest.agent.disks()).toEqual([]);
    expect(await viaVirsh.guestDisks(server)).toEqual([]);
    await viaVirsh.unpublish(server, attachment);
    await v.disconnect();
  });

  it('a suspended domain: TIMEOUT naming server and domain within the deadline, host side intact; resumed, the detach finishes', async () => {
    const v = await volume();
    const attachment = v.attachment(server);
    await consumer.publish(server, v.device, attachment);
    await guest.agent.waitForDisk(v.volumeId, SEE_MS);
    const impatient = createLibvirtConsumer({ host, dataDir: volumes.dir, options: { unplugTimeoutMs: 3_000 }, logger: silentLogger });
    await guest.suspend();
    let error: unknown;
    try {
      const started = Date.now();
      error = await impatient.unpublish(server, attachment).catch((e: unknown) => e);
      expect(Date.now() - started).toBeLessThan(45_000);
    } finally {
      await guest.resume();
    }
    expect(BerthError.is(error) && error.code).toBe('TIMEOUT');
    expect((error as BerthError).message).toContain('web-1');
    expect((error as BerthError).message).toContain(guest.domain);
    expect((error as BerthError).message).toContain('paused');
    expect((error as BerthError).hint).toContain('resume');
    expect(await v.connected()).toBe(true);
    expect(await host.fs.exists(stableLinkPath(v.volumeId))).toBe(true);

    await consumer.unpublish(server, attachment);
    await guest.agent.waitForDiskGone(v.volumeId, SEE_MS);
    expect(await consumer.guestDisks(server)).toEqual([]);
    await v.disconnect();
  });

  it('two attaches to one domain at once get distinct targets; the guest sees both', async () => {
    const [a, b] = [await volume(), await volume()];
    const [pa, pb] = await Promise.all([consumer.publish(server, a.device, a.attachment(server)), consumer.publish(server, b.device, b.attachment(server))]);
    expect(new Set([pa.guestDevice, pb.guestDevice]).size).toBe(2);
    await guest.agent.waitForDisk(a.volumeId, SEE_MS);
    await guest.agent.waitForDisk(b.volumeId, SEE_MS);
    await Promise.all([consumer.unpublish(server, a.attachment(server)), consumer.unpublish(server, b.attachment(server))]);
    expect(await guest.agent.disks()).toEqual([]);
    await a.disconnect();
    await b.disconnect();
  });

  it('a disk plugged behind berth\'s back at the target berth last saw free: the attach reads the live list and takes another target', async () => {
    const [mine, theirs] = [await volume(), await volume()];
    // berth's hint now says the domain has no disks: the next attach would take vda.
    expect(await consumer.guestDisks(server)).toEqual([]);
    const file = path.join(volumes.dir, 'behind-the-back.xml');
    await writeFile(file, `<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='${theirs.device.path}'/><target dev='vda' bus='virtio'/><serial>${theirs.volumeId}</serial></disk>\n`);
    const virsh = (args: string[]) => host.runner.run('virsh', ['-c', guest.uri, ...args], { timeoutMs: 30_000, reject: false });
    try {
      expect((await virsh(['attach-device', guest.domain, file, '--live'])).exitCode).toBe(0);
      await guest.agent.waitForDisk(theirs.volumeId, SEE_MS);
      const attachment = mine.attachment(server);
      const published = await consumer.publish(server, mine.device, attachment);
      expect(published.guestDevice).toBe('/dev/vdb');
      await guest.agent.waitForDisk(mine.volumeId, SEE_MS);
      // Again (a re-run): the alias is taken, and the disk already there is the answer.
      expect(await consumer.publish(server, mine.device, attachment)).toEqual(published);
      await consumer.unpublish(server, attachment);
      await guest.agent.waitForDiskGone(mine.volumeId, SEE_MS);
    } finally {
      // The consumer's own unplug waits until the domain has let go (and asks again if need be);
      // this disk and berth's, should the test have stopped half-way.
      for (const disk of (await consumer.guestDisks(server)) ?? []) if ([mine.volumeId, theirs.volumeId].includes(disk.serial)) await consumer.unplugGuestDisk(server, disk);
      await mine.disconnect();
      await theirs.disconnect();
    }
  });

  it('a domain that does not exist: publish says so; unpublish treats the guest side as gone', async () => {
    const v = await volume();
    const gone = guestServer('web-gone', { type: 'libvirt', domain: 'berth-no-such-domain', uri: guest.uri });
    const attachment = v.attachment(gone);
    const error = await consumer.publish(gone, v.device, attachment).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('UNPROCESSABLE');
    expect((error as BerthError).message).toContain('web-gone');
    await consumer.unpublish(gone, attachment);
    expect(await host.fs.exists(stableLinkPath(v.volumeId))).toBe(false);
    expect(await consumer.guestDisks(gone)).toBeUndefined();
    await v.disconnect();
  });

  it('guestDisks lists a disk attached by hand (virsh attach-device, libvirt\'s alias) by serial; unplugGuestDisk takes it out', async () => {
    const v = await volume();
    const file = path.join(volumes.dir, 'by-hand.xml');
    await writeFile(file, `<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='${v.device.path}'/><target dev='vdq' bus='virtio'/><serial>${v.volumeId}</serial></disk>\n`);
    const virsh = (args: string[]) => host.runner.run('virsh', ['-c', guest.uri, ...args], { timeoutMs: 30_000 });
    try {
      await virsh(['attach-device', guest.domain, file, '--live']);
      await guest.agent.waitForDisk(v.volumeId, SEE_MS);
      const listed = await consumer.guestDisks(server);
      expect(listed).toEqual([{ serial: v.volumeId, id: expect.stringMatching(/^virtio-disk\d+$/), guestDevice: '/dev/vdq', plugged: false }]);
      await consumer.unplugGuestDisk(server, listed![0]!);
      expect(await consumer.guestDisks(server)).toEqual([]);
      await guest.agent.waitForDiskGone(v.volumeId, SEE_MS);
      await consumer.unplugGuestDisk(server, listed![0]!);
      const refused = await consumer.unplugGuestDisk(server, { serial: v.volumeId, id: '--help' }).catch((e: unknown) => e);
      expect(BerthError.is(refused) && refused.code).toBe('VALIDATION');
    } finally {
      await host.runner.run('virsh', ['-c', guest.uri, 'detach-disk', guest.domain, 'vdq', '--live'], { timeoutMs: 30_000, reject: false });
      await v.disconnect();
    }
  });

  // Last (its plugs and unplugs shift the guest's disk names): the contract every consumer keeps
  // (idempotent publish/unpublish, unpublishOrphan), on this guest;
  // the volumes go with the loop volumes in afterAll above.
  describeConsumerConformance('libvirt (a real libvirt domain)', async () => ({
    consumer,
    server,
    makeVolume: () => volumes.makeAttached(server),
    cleanup: async () => undefined,
  }));
});
