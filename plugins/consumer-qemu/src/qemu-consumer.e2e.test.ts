import { connect } from 'node:net';
import { rename } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeConsumerConformance } from '@berth/testkit/conformance';
import { attachmentLinkPath, BerthError, silentLogger, stableLinkPath, type Server } from '@berth/core';
import { createHostServices } from '@berth/host';
import { bootQemuGuest, guestSerial, guestServer, LoopVolumes, type QemuGuest } from '@berth/vmkit';
import { createQemuConsumer, type QemuConsumer } from './qemu-consumer.js';
import { qemuDiskIds } from './qemu-hypervisor.js';

const host = createHostServices();
// The guest probes a hot-plugged disk in 0.3-0.5 s on a quiet machine; a loaded one needs far more.
const SEE_MS = 60_000;

describe('the qemu consumer against a real QEMU guest (TCG)', () => {
  let guest: QemuGuest;
  let volumes: LoopVolumes;
  let consumer: QemuConsumer;
  let server: Server;
  const volume = () => volumes.make();

  async function blockNodes(): Promise<string[]> {
    const nodes = (await guest.control('query-named-block-nodes', { flat: true })) as Array<{ 'node-name': string }>;
    return nodes.map((node) => node['node-name']);
  }

  beforeAll(async () => {
    volumes = await LoopVolumes.create(host, 'berth-consumer-qemu-');
    guest = await bootQemuGuest({ runner: host.runner });
    server = guestServer('vm-qemu-1', { type: 'qemu', qmp: guest.qmpSocket });
    consumer = createQemuConsumer({ host, dataDir: volumes.dir, options: { unplugTimeoutMs: 60_000, qmpTimeoutMs: 30_000 }, logger: silentLogger });
  });

  afterAll(async () => {
    try {
      await guest?.stop();
    } finally {
      await volumes?.cleanup();
    }
  });

  it('hot-plugs a loop device: the guest sees a virtio disk with serial = volume id, its writes land in the file, unplug leaves nothing', async () => {
    const v = await volume();
    const attachment = v.attachment(server);
    const published = await consumer.publish(server, v.device, attachment);
    expect(published).toEqual({ path: attachmentLinkPath(attachment.id), guestDevice: '/dev/vda', serial: v.volumeId });

    const name = await guest.agent.waitForDisk(v.volumeId, SEE_MS);
    const disk = (await guest.agent.disks()).find((d) => d.name === name);
    expect(disk).toEqual({ name, serial: guestSerial(v.volumeId), sizeBytes: 64 * 2 ** 20, readOnly: false });
    expect(await consumer.guestDisks(server)).toEqual([{ serial: v.volumeId, id: `/machine/peripheral/${qemuDiskIds(v.volumeId).deviceId}`, plugged: true }]);

    // Publishing again changes nothing (the pipeline's undo of a detach re-publishes).
    expect(await consumer.publish(server, v.device, attachment)).toEqual(published);
    expect((await guest.agent.disks()).length).toBe(1);

    const pattern = `berth-guest-${v.volumeId.slice(0, 8)}`;
    await guest.agent.writePattern(v.volumeId, 1_048_576 + 123, pattern);

    await consumer.unpublish(server, attachment);
    expect(await guest.agent.disks()).toEqual([]);
    expect(await consumer.guestDisks(server)).toEqual([]);
    expect(await blockNodes()).not.toContain(qemuDiskIds(v.volumeId).nodeName);
    expect(await host.fs.exists(stableLinkPath(v.volumeId))).toBe(false);
    // Unpublishing what is gone is success.
    await consumer.unpublish(server, attachment);

    await v.disconnect();
    expect(await v.read(1_048_576 + 123, pattern.length)).toBe(pattern);
  });

  it('guestDisks lists a disk plugged by hand (no id) by its serial; unplugGuestDisk takes it out and leaves the node it did not make', async () => {
    const v = await volume();
    await guest.control('blockdev-add', { driver: 'host_device', 'node-name': 'by-hand-1', filename: v.device.path });
    try {
      await guest.control('device_add', { driver: 'virtio-blk-pci', drive: 'by-hand-1', bus: 'pci.0', serial: v.volumeId });
      await guest.agent.waitForDisk(v.volumeId, SEE_MS);
      const listed = await consumer.guestDisks(server);
      expect(listed).toEqual([{ serial: v.volumeId, id: expect.stringMatching(/^\/machine\/peripheral-anon\/device\[\d+\]$/), plugged: false }]);
      await consumer.unplugGuestDisk(server, listed![0]!);
      expect(await guest.agent.disks()).toEqual([]);
      expect(await consumer.guestDisks(server)).toEqual([]);
      expect(await blockNodes()).toContain('by-hand-1');
      // Gone already: success.
      await consumer.unplugGuestDisk(server, listed![0]!);
      const refused = await consumer.unplugGuestDisk(server, { serial: v.volumeId, id: '/machine/unattached/device[0]' }).catch((e: unknown) => e);
      expect(BerthError.is(refused) && refused.code).toBe('VALIDATION');
    } finally {
      await guest.control('blockdev-del', { 'node-name': 'by-hand-1' }).catch(() => undefined);
      await v.disconnect();
    }
  });

  it('plugs a read-only attachment read-only: the guest sees ro and cannot write', async () => {
    const v = await volume();
    const attachment = v.attachment(server, 'ro');
    await consumer.publish(server, v.device, attachment);
    const name = await guest.agent.waitForDisk(v.volumeId, SEE_MS);
    expect((await guest.agent.disks()).find((d) => d.name === name)?.readOnly).toBe(true);
    await expect(guest.agent.writePattern(v.volumeId, 0, 'nope')).rejects.toThrow();
    await consumer.unpublish(server, attachment);
    expect(await guest.agent.disks()).toEqual([]);
    await v.disconnect();
    expect(await v.read(0, 4)).toBe('\0\0\0\0');
  });

  it('a paused guest that cannot answer the unplug: TIMEOUT naming the server within the deadline, host side intact; after resume the detach finishes', async () => {
    const v = await volume();
    const attachment = v.attachment(server);
    await consumer.publish(server, v.device, attachment);
    await guest.agent.waitForDisk(v.volumeId, SEE_MS);
    const impatient = createQemuConsumer({ host, dataDir: volumes.dir, options: { unplugTimeoutMs: 2_000, qmpTimeoutMs: 30_000 }, logger: silentLogger });

    await guest.pause();
    let error: unknown;
    try {
      const started = Date.now();
      await impatient.unpublish(server, attachment).catch((e: unknown) => {
        error = e;
      });
      // The deadline is 2 s; the rest is QMP round trips on a loaded machine, never a hang.
      expect(Date.now() - started).toBeLessThan(30_000);
    } finally {
      await guest.resume();
    }
    expect(BerthError.is(error) && error.code).toBe('TIMEOUT');
    const message = (error as BerthError).message;
    expect(message).toContain('vm-qemu-1');
    expect(message).toContain('paused');
    expect((error as BerthError).hint).toMatch(/resume/);
    // Host side intact: the loop device, the link and the block node are all still there.
    expect(await v.connected()).toBe(true);
    expect(await host.fs.exists(stableLinkPath(v.volumeId))).toBe(true);
    expect(await blockNodes()).toContain(qemuDiskIds(v.volumeId).nodeName);

    // Resumed, the guest answers the pending request; a new detach waits for it and finishes.
    await consumer.unpublish(server, attachment);
    await guest.agent.waitForDiskGone(v.volumeId, SEE_MS);
    expect(await consumer.guestDisks(server)).toEqual([]);
    expect(await blockNodes()).not.toContain(qemuDiskIds(v.volumeId).nodeName);
    await v.disconnect();
  });

  it('a monitor another client holds: publish fails having touched nothing (untouched), and leaves no link, node or disk', async () => {
    const v = await volume();
    const attachment = v.attachment(server);
    const impatient = createQemuConsumer({ host, dataDir: volumes.dir, options: { unplugTimeoutMs: 2_000, qmpTimeoutMs: 1_500 }, logger: silentLogger });
    // A client (a script, a qmp-shell) holds the monitor: QEMU greets it and no one else.
    const holder = connect(guest.qmpSocket);
    await new Promise<void>((resolve, reject) => holder.once('data', () => resolve()).once('error', reject));
    let failure: unknown;
    try {
      failure = await impatient.publish(server, v.device, attachment).catch((e: unknown) => e);
    } finally {
      holder.destroy();
    }
    expect(BerthError.is(failure) && failure.details.untouched).toBe(true);
    expect(BerthError.is(failure) && failure.hint).toMatch(/one client at a time/);
    expect(await host.fs.readlink(attachmentLinkPath(attachment.id))).toBeUndefined();
    expect(await host.fs.readlink(stableLinkPath(v.volumeId))).toBeUndefined();
    expect(await blockNodes()).not.toContain(qemuDiskIds(v.volumeId).nodeName);
    expect(await consumer.guestDisks(server)).toEqual([]);
    await v.disconnect();
  });

  it('a device_add QEMU refuses (a bus that does not exist): DRIVER_ERROR naming the server, and the node sent in the same batch is deleted again', async () => {
    const v = await volume();
    const badBus = guestServer('vm-bad-bus', { type: 'qemu', qmp: guest.qmpSocket, bus: 'no-such-bus' });
    const attachment = v.attachment(badBus);
    const error = await consumer.publish(badBus, v.device, attachment).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('DRIVER_ERROR');
    expect((error as BerthError).message).toContain('vm-bad-bus');
    expect(await blockNodes()).not.toContain(qemuDiskIds(v.volumeId).nodeName);
    expect((await guest.agent.disks()).map((d) => d.serial)).not.toContain(guestSerial(v.volumeId));
    await consumer.unpublish(badBus, attachment);
    expect(await host.fs.exists(stableLinkPath(v.volumeId))).toBe(false);
    await v.disconnect();
  });

  it('a QMP socket deleted or moved under a running guest: unpublish refuses (guestHoldsDevice) while its QEMU has the device open, and goes on once the socket is back', async () => {
    const v = await volume();
    const attachment = v.attachment(server);
    await consumer.publish(server, v.device, attachment);
    await guest.agent.waitForDisk(v.volumeId, SEE_MS);
    const moved = `${guest.qmpSocket}.moved`;
    await rename(guest.qmpSocket, moved);
    try {
      const error = await consumer.unpublish(server, attachment).catch((e: unknown) => e);
      expect(BerthError.is(error) && error.code).toBe('CONFLICT');
      expect(BerthError.is(error) && error.details.guestHoldsDevice).toBe(true);
      // Nothing was asked of the guest: core rolls the detach back cleanly (it read "the rollback failed").
      expect(BerthError.is(error) && error.details.untouched).toBe(true);
      expect((error as BerthError).message).toMatch(/qemu/i);
      // Nothing was taken away: the guest has the disk, the host its link.
      expect((await guest.agent.disks()).some((d) => d.serial === guestSerial(v.volumeId))).toBe(true);
      expect(await host.fs.exists(stableLinkPath(v.volumeId))).toBe(true);
    } finally {
      await rename(moved, guest.qmpSocket);
    }
    await consumer.unpublish(server, attachment);
    expect(await consumer.guestDisks(server)).toEqual([]);
    await v.disconnect();
  });

  it('a server whose QEMU is not running: publish says so; unpublish treats the guest side as gone', async () => {
    const v = await volume();
    const gone = guestServer('vm-gone', { type: 'qemu', qmp: path.join(volumes.dir, 'no-such-qmp.sock') });
    const attachment = v.attachment(gone);
    const error = await consumer.publish(gone, v.device, attachment).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('UNPROCESSABLE');
    expect((error as BerthError).message).toContain('vm-gone');
    await consumer.unpublish(gone, attachment);
    expect(await host.fs.exists(stableLinkPath(v.volumeId))).toBe(false);
    expect(await consumer.guestDisks(gone)).toBeUndefined();
    await consumer.unplugGuestDisk(gone, { serial: v.volumeId, id: '/machine/peripheral-anon/device[0]' });

    const noHypervisor = { ...server, hypervisor: undefined };
    const config = await consumer.publish(noHypervisor, v.device, attachment).catch((e: unknown) => e);
    expect(BerthError.is(config) && config.code).toBe('CONFIG');
    await v.disconnect();
  });

  // Last (its plugs and unplugs shift the guest's disk names): the contract every consumer keeps
  // (idempotent publish/unpublish, unpublishOrphan), on this guest;
  // the volumes go with the loop volumes in afterAll above.
  describeConsumerConformance('qemu (a real QEMU guest)', async () => ({
    consumer,
    server,
    makeVolume: () => volumes.makeAttached(server),
    cleanup: async () => undefined,
  }));
});

describe('the qemu consumer when QEMU dies under an unplug', () => {
  let guest: QemuGuest | undefined;
  let volumes: LoopVolumes | undefined;

  afterAll(async () => {
    try {
      await guest?.stop();
    } finally {
      await volumes?.cleanup();
    }
  });

  it('QEMU SIGKILLed while the unplug waits on a paused guest: unpublish ends as a gone guest (its disk went with it), not as a lost connection', async () => {
    volumes = await LoopVolumes.create(host, 'berth-consumer-qemu-kill-');
    guest = await bootQemuGuest({ runner: host.runner });
    const server = guestServer('vm-qemu-kill', { type: 'qemu', qmp: guest.qmpSocket });
    const consumer = createQemuConsumer({ host, dataDir: volumes.dir, options: { unplugTimeoutMs: 60_000, qmpTimeoutMs: 30_000 }, logger: silentLogger });
    const v = await volumes.make();
    const attachment = v.attachment(server);
    await consumer.publish(server, v.device, attachment);
    await guest.agent.waitForDisk(v.volumeId, SEE_MS);
    await guest.pause();
    const unpublished = consumer.unpublish(server, attachment).then(
      () => undefined,
      (e: unknown) => e,
    );
    // Once the unpublish holds the socket's lock (its QMP session and device_del follow within
    // milliseconds, and the paused guest keeps it waiting), QEMU dies. Whatever the exact moment —
    // before the connect, between the requests, in the wait — the answer must be the same.
    const lockDir = path.join(volumes.dir, 'consumer-qemu', 'locks');
    await host.waiter.waitUntil(lockDir, async () => ((await host.fs.readdir(lockDir).catch(() => [])).some((f) => f.endsWith('.lock')) ? true : undefined), { timeoutMs: 10_000, what: 'the unpublish to hold the QMP socket', signal: AbortSignal.timeout(10_000) });
    process.kill(guest.pid, 'SIGKILL');
    const started = Date.now();
    expect(await unpublished).toBeUndefined();
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(await host.fs.exists(stableLinkPath(v.volumeId))).toBe(false);
    await v.disconnect();
  });
});

