import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHostServices, type HostFs } from '@berth/host';
import { attachmentLinkPath, stableLinkPath, type Attachment, type Consumer, type Device, type Server } from '@berth/core';

/** A connected device of a fresh volume and an attachment of it to the suite's server. */
export interface ConsumerConformanceVolume {
  volumeId: string;
  device: Device;
  attachment: Attachment;
}

/** What a consumer's conformance run needs: the consumer, a server it publishes to, fresh devices. */
export interface ConsumerConformanceSetup {
  /** The consumer under test. */
  consumer: Consumer;
  /** The server it publishes to (a guest consumer's running guest). */
  server: Server;
  /** A connected device of a new volume (a loop device), with an attachment of it to `server`. */
  makeVolume(): Promise<ConsumerConformanceVolume>;
  /** Remove what the setup made (devices, links, temp dirs); runs once after the suite. */
  cleanup(): Promise<void>;
  /** Where the host's links are read (default: the real machine's `/`). */
  fs?: HostFs;
}

/** Options of a consumer conformance run. */
export interface ConsumerConformanceOptions {
  /** Timeout of each test, in ms (default 120 000: a guest consumer waits for its guest). */
  timeoutMs?: number;
}

/**
 * The suite every consumer must pass: publish and unpublish are idempotent and leave the volume's
 * host name (`/dev/berth/<volume-id>`) leading to the device while published, and gone after; and
 * `unpublishOrphan` — what `berth reconcile` calls for a device no record names any more — drops
 * that name only while it still leads to that very device (a loop number is reused for the next
 * file attached), never a name in its `keep` (live records' ids), and is idempotent; a guest consumer (one with `guestDisks`) has `unplugGuestDisk`
 * too, lists a published volume's disk by serial = volume id, and unplugs it (idempotently) while
 * the host's name stays for `unpublish`; a consumer with `checkPublication` finds nothing wrong
 * after `publish`, names a removed or re-pointed name, and nothing again once published again. Call it at the top level of a test file (or inside a
 * `describe` whose `beforeAll` made what the setup uses); it registers a vitest `describe` block.
 */
export function describeConsumerConformance(name: string, setup: () => Promise<ConsumerConformanceSetup>, options: ConsumerConformanceOptions = {}): void {
  const timeoutMs = options.timeoutMs ?? 120_000;

  describe(`consumer conformance: ${name}`, { timeout: timeoutMs }, () => {
    let env: ConsumerConformanceSetup | undefined;
    let fs: HostFs;

    function current(): ConsumerConformanceSetup {
      if (!env) throw new Error('the conformance setup did not finish (see the beforeAll error)');
      return env;
    }

    /** Where the volume's host name leads now (undefined: there is none). */
    const volumeLink = (volumeId: string): Promise<string | undefined> => fs.readlink(stableLinkPath(volumeId));

    beforeAll(async () => {
      env = await setup();
      fs = env.fs ?? createHostServices().fs;
    }, timeoutMs);

    afterAll(async () => {
      await env?.cleanup();
    }, timeoutMs);

    it('publish twice, unpublish twice: the volume name leads to the device while published, and is gone after', async () => {
      const { consumer, server } = current();
      const v = await current().makeVolume();
      const first = await consumer.publish(server, v.device, v.attachment);
      expect(first.path).toMatch(/^\//);
      expect(await consumer.publish(server, v.device, v.attachment)).toEqual(first);
      expect(await volumeLink(v.volumeId)).toBe(v.device.path);
      await consumer.unpublish(server, v.attachment);
      expect(await volumeLink(v.volumeId)).toBeUndefined();
      await consumer.unpublish(server, v.attachment);
    });

    it('unpublishOrphan drops the volume name that still leads to the device, and is idempotent', async () => {
      const { consumer, server } = current();
      expect(typeof consumer.unpublishOrphan, 'reconcile needs unpublishOrphan to drop what no record names').toBe('function');
      const v = await current().makeVolume();
      await consumer.publish(server, v.device, v.attachment);
      try {
        await consumer.unpublishOrphan!(v.volumeId, v.device);
        expect(await volumeLink(v.volumeId)).toBeUndefined();
        await consumer.unpublishOrphan!(v.volumeId, v.device);
      } finally {
        // What the record-less call leaves (a guest's disk) goes with the record's unpublish.
        await consumer.unpublish(server, v.attachment);
      }
    });

    it('unpublishOrphan also drops the name of an attachment whose record is lost (it leads to the orphan device)', async () => {
      const { consumer, server } = current();
      const v = await current().makeVolume();
      await consumer.publish(server, v.device, v.attachment);
      try {
        expect(await fs.readlink(attachmentLinkPath(v.attachment.id))).toBe(v.device.path);
        await consumer.unpublishOrphan!(v.volumeId, v.device);
        expect(await fs.readlink(attachmentLinkPath(v.attachment.id))).toBeUndefined();
      } finally {
        await consumer.unpublish(server, v.attachment);
      }
    });

    it('unpublishOrphan leaves the names live records hold (keep), even leading to the orphan\'s device: the kernel reused its name for another attachment\'s disk', async () => {
      const { consumer, server } = current();
      const v = await current().makeVolume();
      await consumer.publish(server, v.device, v.attachment);
      try {
        // Another volume's orphan whose device had the same name before the kernel reused it.
        const orphanVolume = '0f0f0f0f-0f0f-4f0f-8f0f-0f0f0f0f0f0f';
        await consumer.unpublishOrphan!(orphanVolume, v.device, { keep: [v.attachment.id, v.volumeId] });
        expect(await fs.readlink(attachmentLinkPath(v.attachment.id))).toBe(v.device.path);
        expect(await volumeLink(v.volumeId)).toBe(v.device.path);
      } finally {
        await consumer.unpublish(server, v.attachment);
      }
    });

    it('guestDisks and unplugGuestDisk come together; a guest lists a published disk by serial (its own: not plugged false) and unplugs it, the host name staying', async () => {
      const { consumer, server } = current();
      expect(typeof consumer.unplugGuestDisk, 'a consumer that lists guest disks can unplug them (reconcile needs both)').toBe(typeof consumer.guestDisks);
      if (!consumer.guestDisks || !consumer.unplugGuestDisk) return;
      const v = await current().makeVolume();
      await consumer.publish(server, v.device, v.attachment);
      try {
        const disk = (await consumer.guestDisks(server))?.find((d) => d.serial === v.volumeId);
        expect(disk, 'the published disk is listed with serial = volume id').toBeDefined();
        // A consumer that tells its own disks apart says so for the one it published.
        if (disk?.plugged !== undefined) expect(disk.plugged, 'the disk it published is its own (plugged)').toBe(true);
        await consumer.unplugGuestDisk(server, disk!);
        expect((await consumer.guestDisks(server))?.map((d) => d.serial)).not.toContain(v.volumeId);
        expect(await volumeLink(v.volumeId)).toBe(v.device.path);
        await consumer.unplugGuestDisk(server, disk!);
      } finally {
        await consumer.unpublish(server, v.attachment);
      }
      expect(await volumeLink(v.volumeId)).toBeUndefined();
    });

    it('checkPublication (when the consumer has it) finds nothing after publish, names a removed or re-pointed name, and publish repairs it', async () => {
      const { consumer, server } = current();
      if (!consumer.checkPublication) return;
      const v = await current().makeVolume();
      const other = await current().makeVolume();
      const attachment = { ...v.attachment, device: v.device };
      await consumer.publish(server, v.device, attachment);
      try {
        expect(await consumer.checkPublication(server, attachment)).toBeUndefined();
        await fs.unlink(stableLinkPath(v.volumeId));
        expect(await consumer.checkPublication(server, attachment)).toContain(stableLinkPath(v.volumeId));
        await fs.symlink(other.device.path, attachmentLinkPath(v.attachment.id));
        expect(await consumer.checkPublication(server, attachment)).toContain(other.device.path);
        // What reconcile's fix does: publish again (idempotent), after which nothing is wrong.
        await consumer.publish(server, v.device, attachment);
        expect(await consumer.checkPublication(server, attachment)).toBeUndefined();
        expect(await volumeLink(v.volumeId)).toBe(v.device.path);
      } finally {
        await consumer.unpublish(server, attachment);
      }
    });

    it('unpublishOrphan leaves a volume name that leads to another device now', async () => {
      const { consumer, server } = current();
      const v = await current().makeVolume();
      const other = await current().makeVolume();
      await consumer.publish(server, v.device, v.attachment);
      try {
        // The orphan was `other.device`: v's name now leads elsewhere, so it stays.
        await consumer.unpublishOrphan!(v.volumeId, other.device);
        expect(await volumeLink(v.volumeId)).toBe(v.device.path);
      } finally {
        await consumer.unpublish(server, v.attachment);
      }
    });
  });
}
