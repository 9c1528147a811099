import { createHash } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { z } from '@berth/core/zod';
import { acquireFileLock, holderOf, LockTimeoutError, type HostServices } from '@berth/host';
import {
  attachmentLinks,
  BerthError,
  createHostConsumer,
  failUnreachedPublish,
  KeyedLock,
  lazySchema,
  virtioDiskName,
  type Attachment,
  type Consumer,
  type Device,
  type GuestDisk,
  type PluginContext,
  type Publication,
  type Server,
  toBerthError,
} from '@berth/core';
import { QmpClient, isQmpConnectionLost, isQmpFailure, qmpFailureOf, zEmptyReturn, type QmpCallOptions } from '@berth/qemu';
import { qemuDiskIds, qemuDiskMode, qemuHypervisorOf, volumeIdOfDevice, type QemuHypervisor } from './qemu-hypervisor.js';

/** The consumer's name: servers with `hypervisor.type = 'qemu'` use it. */
export const NAME = 'qemu';

/** Options of the `qemu` consumer (the plugin's options in the config). */
export const zQemuConsumerOptions = lazySchema(() => z.object({
  /** How long the guest has to release a disk after `device_del` (DEVICE_DELETED), in ms. */
  unplugTimeoutMs: z.number().int().positive().default(60_000),
  /** Deadline of one QMP exchange (connect, a command), in ms. */
  qmpTimeoutMs: z.number().int().positive().default(10_000),
}));
/** Parsed options of the `qemu` consumer. */
export type QemuConsumerOptions = z.output<typeof zQemuConsumerOptions>;

/** A guest consumer's publication: the host link, the guest's likely device name and the serial. */
export type GuestPublication = Publication & Required<Pick<Publication, 'guestDevice' | 'serial'>>;

/** The `qemu` consumer: every method of the contract, guest listing and unplugging included. */
export interface QemuConsumer extends Consumer {
  publish(server: Server, device: Device, attachment: Attachment): Promise<GuestPublication>;
  /** The virtio disks of the server's guest now, by serial (`undefined`: its QEMU does not run). */
  guestDisks(server: Server): Promise<GuestDisk[] | undefined>;
  unplugGuestDisk(server: Server, disk: GuestDisk): Promise<void>;
}

/** Where QEMU keeps devices added with an id, and without one. */
const PERIPHERAL = '/machine/peripheral';
const PERIPHERAL_ANON = '/machine/peripheral-anon';

const zPeripheralList = lazySchema(() => z.array(z.looseObject({ name: z.string(), type: z.string() })));
const zSerial = lazySchema(() => z.string().nullable());
const zStatus = lazySchema(() => z.looseObject({ status: z.string(), running: z.boolean() }));
const VIRTIO_BLK = 'child<virtio-blk-pci>';
// How often an unanswered unplug request is sent again.
const REASK_MS = 5_000;

/** True when `promise` resolves within `ms`; false when it rejects or the time passes first. */
function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    promise.then(
      () => {
        clearTimeout(timer);
        resolve(true);
      },
      () => {
        clearTimeout(timer);
        resolve(false);
      },
    );
  });
}

/**
 * The `qemu` consumer: the server is a running QEMU guest reached over its QMP socket. `publish`
 * makes the host's stable link (`/dev/berth/<volume-id>`, as the host consumer does), opens it as a
 * `host_device` block node and plugs a `virtio-blk-pci` device with serial = volume id into the
 * guest; `unpublish` asks the guest to let go (`device_del`), waits for `DEVICE_DELETED` within
 * `unplugTimeoutMs`, then deletes the node and the link. A guest that does not let go (paused,
 * hung, still booting) is a TIMEOUT naming the server, with the host side left as it was. Both are
 * idempotent: what is already there (or already gone) is skipped.
 */
export function createQemuConsumer(context: PluginContext<Partial<QemuConsumerOptions>>): QemuConsumer {
  const options = zQemuConsumerOptions.parse(context.options ?? {});
  const link = createHostConsumer(context.host.fs);
  const locks = new KeyedLock();
  const lockDir = path.join(context.dataDir, 'consumer-qemu', 'locks');

  /**
   * One QMP session with the server's QEMU, serialised per socket in this process and across
   * processes (a monitor serves one client at a time; a second would wait for its greeting).
   * `unreachable` runs instead when nothing listens on the socket: the QEMU is gone.
   */
  async function withQmp<T>(server: Server, hv: QemuHypervisor, fn: (qmp: QmpClient) => Promise<T>, unreachable: () => Promise<T>): Promise<T> {
    return locks.withLock(hv.qmp, async () => {
      await mkdir(lockDir, { recursive: true, mode: 0o700 });
      const key = createHash('sha256').update(hv.qmp).digest('hex').slice(0, 32);
      // Another berth may be waiting out a guest's unplug on this socket: wait as long as that can take.
      const release = await acquireFileLock(path.join(lockDir, `${key}.lock`), {
        timeoutMs: options.unplugTimeoutMs + options.qmpTimeoutMs * 4,
        what: `the QMP socket of server ${server.name}`,
      }).catch((error: unknown) => {
        if (!(error instanceof LockTimeoutError)) throw error;
        throw new BerthError('TIMEOUT', `another berth process kept the QMP socket of server ${server.name} busy for ${Math.round(error.timeoutMs / 1000)} s`, {
          hint: 'let the other attach or detach of this guest finish (berth operation list), then try again',
          details: { server: server.name, qmp: hv.qmp, untouched: true },
          cause: error,
        });
      });
      try {
        let qmp: QmpClient;
        try {
          qmp = await QmpClient.connect(hv.qmp, { timeoutMs: options.qmpTimeoutMs });
        } catch (error) {
          // Nothing listens, or QEMU died while greeting (its connection lost, nothing there now).
          if (isUnreachable(error) || (isQmpConnectionLost(error) && (await nothingListens(hv)))) return await unreachable();
          // No session: nothing was asked of the guest.
          throw sessionFailed(server, hv, error);
        }
        try {
          return await fn(qmp);
        } finally {
          qmp.close();
        }
      } finally {
        await release();
      }
    });
  }

  const call: QmpCallOptions = { timeoutMs: options.qmpTimeoutMs };

  const refuseWhileOpen = (server: Server, hv: QemuHypervisor, attachment: Attachment, untouched: boolean): Promise<void> =>
    refuseWhileOpenWith(context.host, server, hv, attachment, options.qmpTimeoutMs, untouched);

  /** Whether nothing listens on the server's QMP socket now (its QEMU exited). */
  async function nothingListens(hv: QemuHypervisor): Promise<boolean> {
    try {
      (await QmpClient.connect(hv.qmp, { timeoutMs: options.qmpTimeoutMs })).close();
      return false;
    } catch (error) {
      return isUnreachable(error);
    }
  }

  async function virtioDevices(qmp: QmpClient): Promise<string[]> {
    const named = await qmp.request('qom-list', { path: '/machine/peripheral' }, zPeripheralList, call);
    return named.filter((child) => child.type === VIRTIO_BLK).map((child) => child.name);
  }

  async function anonymousVirtioCount(qmp: QmpClient): Promise<number> {
    const anon = await qmp.request('qom-list', { path: PERIPHERAL_ANON }, zPeripheralList, call);
    return anon.filter((child) => child.type === VIRTIO_BLK).length;
  }

  /** The QOM paths of every virtio disk in the guest, with an id or without (plugged by anyone). */
  async function virtioPaths(qmp: QmpClient): Promise<string[]> {
    const paths: string[] = [];
    for (const parent of [PERIPHERAL, PERIPHERAL_ANON]) {
      const children = await qmp.request('qom-list', { path: parent }, zPeripheralList, call);
      for (const child of children) if (child.type === VIRTIO_BLK) paths.push(`${parent}/${child.name}`);
    }
    return paths;
  }

  return {
    name: NAME,

    async publish(server, device, attachment) {
      const hv = qemuHypervisorOf(server);
      const { deviceId, nodeName } = qemuDiskIds(attachment.volumeId);
      const mode = qemuDiskMode(attachment);
      const before = await attachmentLinks(context.host.fs, attachment);
      const published = await link.publish(server, device, attachment);
      // QEMU opens the stable link, so its block node names the volume (`/dev/berth/<id>`), not a
      // kernel name that another device may carry tomorrow.
      const filename = context.host.fs.resolve(published.path);
      const guestDevice = await withQmp(
        server,
        hv,
        async (qmp) => {
          // One batch, not a round trip per command: QEMU runs them in order, and on a busy TCG
          // main loop every round trip costs a scheduling slot of both processes. What is already
          // there (a re-run after a crash) answers "Duplicate ..." and is kept as it is.
          const blockdev = {
            driver: 'host_device',
            'node-name': nodeName,
            filename,
            'read-only': mode.readOnly,
            cache: { direct: mode.direct, 'no-flush': false },
            // Native AIO needs O_DIRECT; with host caching QEMU's thread pool does the I/O.
            aio: mode.direct ? 'native' : 'threads',
            discard: mode.discard ? 'unmap' : 'ignore',
          };
          const [named, anonymous, nodeAdded, deviceAdded] = await Promise.allSettled([
            virtioDevices(qmp),
            anonymousVirtioCount(qmp),
            qmp.request('blockdev-add', blockdev, zEmptyReturn, call),
            qmp.request('device_add', { driver: 'virtio-blk-pci', id: deviceId, drive: nodeName, bus: hv.bus, serial: attachment.volumeId }, zEmptyReturn, call),
          ]);
          const addedNode = nodeAdded.status === 'fulfilled';
          const nodeFailed = nodeAdded.status === 'rejected' && !isQmpFailure(nodeAdded.reason, /Duplicate node/i) ? nodeAdded.reason : undefined;
          if (deviceAdded.status === 'rejected' && !isQmpFailure(deviceAdded.reason, /Duplicate (device )?ID/i)) {
            // A node nobody uses would hold the host device open and block the disconnect.
            if (addedNode) await qmp.execute('blockdev-del', { 'node-name': nodeName }, call).catch(() => undefined);
            // The device could not find its node because the node could not be opened: say why.
            throw hotplugFailed(server, hv, attachment.volumeId, nodeFailed ?? deviceAdded.reason);
          }
          // The device was there already, on a node of its own: the one just added is nobody's.
          if (deviceAdded.status === 'rejected' && addedNode) await qmp.execute('blockdev-del', { 'node-name': nodeName }, call).catch(() => undefined);
          if (named.status === 'rejected') throw named.reason;
          if (anonymous.status === 'rejected') throw anonymous.reason;
          return virtioDiskName(named.value.filter((id) => id !== deviceId).length + anonymous.value);
        },
        async () => {
          throw new BerthError('UNPROCESSABLE', `cannot reach the QEMU of server ${server.name} at ${hv.qmp}: nothing listens there`, {
            hint: `start the guest, or give the server its QMP socket (berth server delete ${server.name}; berth server create ${server.name} --hypervisor qemu --qmp PATH)`,
            details: { server: server.name, qmp: hv.qmp, untouched: true },
          });
        },
      ).catch((error: unknown) => failUnreachedPublish(context.host.fs, attachment, device, before, error));
      return { path: published.path, guestDevice, serial: attachment.volumeId };
    },

    async unpublish(server, attachment, unpublishOptions) {
      const hv = qemuHypervisorOf(server);
      const { deviceId, nodeName } = qemuDiskIds(attachment.volumeId);
      await withQmp(
        server,
        hv,
        async (qmp) => {
          try {
            if ((await virtioDevices(qmp)).includes(deviceId)) await unplug(qmp, server, hv, `${PERIPHERAL}/${deviceId}`, attachment.volumeId);
            await deleteNode(qmp, nodeName);
          } catch (error) {
            // QEMU died under the unplug (killed, crashed): its guest went with it — taken so only
            // once nothing answers on its socket and nothing has the device open (else as it was).
            if (!isQmpConnectionLost(error) || !(await nothingListens(hv))) throw error;
            await refuseWhileOpen(server, hv, attachment, false);
          }
        },
        // Nothing listens on the socket: that QEMU is gone, and its guest holds nothing any more —
        // unless the device is still open: a QEMU whose socket was deleted (systemd-tmpfiles
        // cleans /tmp) or moved runs on with the disk, out of berth's reach.
        // Nothing was asked of the guest then (`untouched`): the detach rolls back to attached.
        () => refuseWhileOpen(server, hv, attachment, true),
      );
      await link.unpublish(server, attachment, unpublishOptions);
    },

    // No server record, no QMP socket: only the host link goes (a guest holding the device would
    // have kept reconcile's disconnect, which runs first, from happening).
    unpublishOrphan: (volumeId, device, options) => link.unpublishOrphan(volumeId, device, options),

    async guestDisks(server) {
      const hv = qemuHypervisorOf(server);
      return withQmp<GuestDisk[] | undefined>(
        server,
        hv,
        async (qmp) => {
          const disks: GuestDisk[] = [];
          for (const id of await virtioPaths(qmp)) {
            // QEMU holds the whole serial (the guest sees its first 20 characters).
            const serial = await qmp.request('qom-get', { path: id, property: 'serial' }, zSerial, call);
            // Berth's own device for the volume its serial names, or someone else's with that serial.
            disks.push({ serial: serial ?? '', id, plugged: serial !== null && id === `${PERIPHERAL}/${qemuDiskIds(serial).deviceId}` });
          }
          return disks;
        },
        async () => undefined,
      );
    },

    async unplugGuestDisk(server, disk) {
      const hv = qemuHypervisorOf(server);
      if (!disk.id.startsWith(`${PERIPHERAL}/`) && !disk.id.startsWith(`${PERIPHERAL_ANON}/`)) {
        throw new BerthError('VALIDATION', `${disk.id} is not a QEMU device path (${PERIPHERAL}/... or ${PERIPHERAL_ANON}/...)`, {
          hint: 'pass a disk as guestDisks lists it',
          details: { server: server.name, disk: disk.id },
        });
      }
      await withQmp(
        server,
        hv,
        async (qmp) => {
          if ((await virtioPaths(qmp)).includes(disk.id)) await unplug(qmp, server, hv, disk.id, disk.serial);
          // The node berth would have opened for that volume, when nothing uses it any more; a
          // node someone else added is theirs.
          if (volumeIdOfDevice(`berth-${disk.serial}`)) await deleteNode(qmp, qemuDiskIds(disk.serial).nodeName, true);
        },
        async () => undefined,
      );
    },

    async check() {
      return { ok: true, summary: 'hot-plugs virtio-blk disks into running QEMU guests over each server\'s QMP socket' };
    },
  };

  /**
   * `blockdev-del` of a node, when it is there (asked straight away: a node already gone answers
   * "Failed to find node", one round trip fewer than listing first); `stillUsed`: a node another
   * device uses is left.
   */
  async function deleteNode(qmp: QmpClient, nodeName: string, stillUsed = false): Promise<void> {
    try {
      await qmp.request('blockdev-del', { 'node-name': nodeName }, zEmptyReturn, call);
    } catch (error) {
      if (isQmpFailure(error, /Failed to find node/)) return;
      if (stillUsed && isQmpFailure(error, /in use|is used/i)) return;
      throw error;
    }
  }

  /**
   * `device_del` and wait for the guest to let go. The event is subscribed before the request
   * (QEMU may send it before the reply). A request the guest got while still booting is lost for
   * good (libvirt issue 309 is this), so it is sent again every REASK_MS until the deadline, as
   * Nova's detach loop does; QEMU 7.2 accepts a repeated `device_del`. A device gone meanwhile
   * (DeviceNotFound) is what was wanted.
   */
  async function unplug(qmp: QmpClient, server: Server, hv: QemuHypervisor, devicePath: string, volumeId: string): Promise<void> {
    const deadline = Date.now() + options.unplugTimeoutMs;
    const stop = new AbortController();
    // `device_del` takes an id or a QOM path; the event names the path either way.
    const deleted = qmp.waitForEvent('DEVICE_DELETED', (event) => event.data?.path === devicePath, {
      timeoutMs: options.unplugTimeoutMs,
      signal: stop.signal,
    });
    // Settled below in every path; this keeps an early exit from leaving it unhandled.
    deleted.catch(() => undefined);
    try {
      for (;;) {
        try {
          await qmp.request('device_del', { id: devicePath }, zEmptyReturn, call);
        } catch (error) {
          if (isQmpFailure(error, /not found/i)) return;
          // "already in the process of unplug" (newer QEMU): the first request stands.
          if (!isQmpFailure(error, /in the process of unplug/i)) throw error;
        }
        const left = deadline - Date.now();
        if (left <= 0) break;
        const gone = await settlesWithin(deleted, Math.min(REASK_MS, left));
        if (gone) return;
        if (Date.now() >= deadline) break;
      }
    } finally {
      stop.abort();
    }
    // The event may have been missed only if the device is gone: look before blaming the guest.
    if (!(await virtioPaths(qmp)).includes(devicePath)) return;
    const status = await qmp.request('query-status', undefined, zStatus, call).catch(() => undefined);
    const state = status ? (status.running ? 'running' : status.status) : 'unknown';
    throw new BerthError(
      'TIMEOUT',
      `the guest of server ${server.name} did not release the disk of volume ${volumeId} within ${Math.round(options.unplugTimeoutMs / 1000)} s (QEMU at ${hv.qmp}, guest ${state}); the host side is left connected`,
      {
        hint:
          state === 'running'
            ? 'the guest ignored the unplug request (still booting, or the disk is busy in it): release it in the guest, then run the detach again — the request stays pending (the guest may drop the disk on its own later), so the attachment is left error_detaching until the detach runs again or `berth reconcile` finishes it'
            : `the guest is ${state} and cannot answer the unplug request: resume it (QMP cont), then run the detach again — the request stays pending, so the guest drops the disk when it resumes; the attachment is left error_detaching until the detach runs again or \`berth reconcile\` finishes it`,
        details: { server: server.name, volumeId, qmp: hv.qmp, guestState: state, guestHoldsDevice: true, unplugRequested: true },
      },
    );
  }
}

/**
 * Nothing answers on a server's QMP socket: the guest is taken for gone only while nothing has the
 * attachment's host device open. A process that does (its QEMU, whose socket was deleted or moved)
 * may still give the disk to its guest: refused with `guestHoldsDevice` — neither a detach nor
 * `--force` then disconnects the device under it.
 */
async function refuseWhileOpenWith(host: HostServices, server: Server, hv: QemuHypervisor, attachment: Attachment, timeoutMs: number, untouched: boolean): Promise<void> {
  const device = attachment.device;
  if (!device) return;
  const node = host.fs.resolve(device.path);
  const holder = await holderOf(host, { node, sysName: path.basename(device.path) }, { timeoutMs }).catch(() => undefined);
  if (holder === undefined) return;
  throw new BerthError('CONFLICT', `nothing answers on the QMP socket of server ${server.name} (${hv.qmp}), but the volume's device ${device.path} is still in use (${holder}): its guest may still have the disk`, {
    hint: `if that is the server's QEMU (its socket deleted or moved), give it back its QMP socket or shut the guest down, then detach again; berth never disconnects a disk a guest may still hold`,
    // `untouched` when no session was had at all (the socket moved or deleted): nothing was asked
    // of the guest and the host link is still there, so the detach rolls back cleanly — it read
    // "the rollback failed" and left the volume `error` (a fault explorer's moved socket).
    details: { server: server.name, qmp: hv.qmp, volumeId: attachment.volumeId, guestHoldsDevice: true, ...(untouched ? { untouched: true } : {}) },
  });
}

/** Whether connecting failed because nothing listens on the socket (QEMU not running). */
function isUnreachable(error: unknown): boolean {
  if (!BerthError.is(error) || error.details.qmpClosed !== true) return false;
  const code = (error.cause as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOENT' || code === 'ECONNREFUSED';
}

/**
 * No QMP session could be had with a QEMU that listens (no greeting: another client holds the
 * monitor, or its main loop is blocked): nothing was asked of the guest (`untouched`).
 */
function sessionFailed(server: Server, hv: QemuHypervisor, error: unknown): BerthError {
  const e = toBerthError(error);
  return new BerthError(e.code, `cannot talk to the QEMU of server ${server.name} at ${hv.qmp}: ${e.message}`, {
    hint: 'a QMP monitor serves one client at a time: another client (a script, virsh, a qmp-shell) may hold it — close it and try again; or the guest\'s main loop is blocked',
    details: { ...e.details, server: server.name, qmp: hv.qmp, untouched: true },
    cause: error,
  });
}

function hotplugFailed(server: Server, hv: QemuHypervisor, volumeId: string, error: unknown): BerthError {
  const desc = qmpFailureOf(error)?.desc ?? (error instanceof Error ? error.message : String(error));
  const noHotplug = /does not support hotplugging/.test(desc);
  return new BerthError('DRIVER_ERROR', `cannot plug the disk of volume ${volumeId} into the guest of server ${server.name}: ${desc.trim()}`, {
    hint: noHotplug
      ? `the guest's bus ${hv.bus} takes no hot-plugged devices: boot it with ACPI on the pc machine, or name a hot-pluggable bus (a pcie-root-port on q35)`
      : 'see the QEMU log of that guest',
    details: { server: server.name, volumeId, qmp: hv.qmp },
    cause: error,
  });
}
