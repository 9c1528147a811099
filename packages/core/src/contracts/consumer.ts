import type { Device } from '../connection.js';
import type { Attachment, Server } from '../model.js';
import type { CheckResult } from './check.js';

/** Where a consumer made the device available. */
export interface Publication {
  /** The path users should use on the host (`/dev/berth/<volume-id>`). */
  path: string;
  /**
   * A guest consumer (`qemu`, `libvirt`): the device's likely name inside the guest (`/dev/vdb`,
   * Nova's `mountpoint`). Only a hint: the guest names disks in the order it probes them.
   */
  guestDevice?: string;
  /** A guest consumer: the disk's serial, the volume id (a virtio guest sees its first 20 characters). */
  serial?: string;
}

/** What core tells a consumer when it unpublishes one attachment. */
export interface UnpublishOptions {
  /**
   * Other attachments of the same volume on this host still use the device (they share it): keep
   * whatever names the volume's device as a whole (the host consumer's `/dev/berth/<volume-id>`).
   */
  stillShared?: boolean;
}

/** What `Consumer.unpublishOrphan` must leave alone. */
export interface UnpublishOrphanOptions {
  /**
   * Names that live records hold on this host — its attachments' ids and their volumes' ids —:
   * never removed, even when they lead to the orphan's device (the kernel gave its name to
   * another disk, which another attachment published). Absent: an older caller; nothing is kept.
   */
  keep?: readonly string[];
}

/** A disk a guest consumer finds in a server's guest (`Consumer.guestDisks`). */
export interface GuestDisk {
  /** The disk's serial as the hypervisor holds it (berth plugs with serial = volume id). */
  serial: string;
  /** The hypervisor's handle of the disk: QEMU's QOM path, libvirt's device alias. */
  id: string;
  /** The guest's likely name of it (`/dev/vdb`), when the hypervisor says. */
  guestDevice?: string;
  /**
   * Whether the consumer plugged it itself for the volume its serial names (its own device id or
   * alias for that volume): `false` for a disk someone else plugged carrying a volume's serial.
   * Unset: the consumer cannot tell, and the serial alone is taken as before. Reconcile does not
   * let such a foreign disk stand for an attachment: the guest writes to whatever file that disk
   * opens, not the volume (a fault explorer's hand-plugged disk with a volume's serial hid the
   * loss of berth's own one, and the guest's writes went to another file).
   */
  plugged?: boolean;
}

/**
 * A consumer: makes a connected device available to the server (libvirt's attach in the seed).
 * The default `host` consumer publishes stable symlinks; the guest consumers hot-plug the device
 * into a running VM. Both methods are idempotent. Several attachments of one volume on one host
 * share one device; each is published and unpublished on its own, and `unpublish` says whether
 * others still share it. `unpublish` of a guest consumer resolves only once the guest has really
 * released the device (else TIMEOUT with `details.guestHoldsDevice`): the host side is
 * disconnected after it, never while a guest still has the device.
 */
export interface Consumer {
  readonly name: string;
  /**
   * Make the device available; resolves with where. `device.path` (and `attachment.device`'s, in
   * every method) is the path on this machine: core resolves a transport's other host root (the
   * simulated host's) before it calls a consumer, so a consumer never maps paths itself.
   */
  publish(server: Server, device: Device, attachment: Attachment): Promise<Publication>;
  /** Undo `publish`; succeeds when it is already gone. */
  unpublish(server: Server, attachment: Attachment, options?: UnpublishOptions): Promise<void>;
  /**
   * Drop what this consumer published on this host for volume `volumeId` at `device` when no record
   * is left to unpublish by (`berth reconcile`, for a device no attachment uses any more): only
   * what still names that very device (the host's `/dev/berth/<volume-id>` while it leads there — a
   * loop number is reused for the next file attached). Without the server record a guest consumer
   * cannot find a guest: the guest side is not touched (a guest still holding the device keeps the
   * disconnect before this from happening). Idempotent; the consumer conformance suite checks it.
   * A consumer without it leaves such names behind (reconcile logs it). Names in `options.keep`
   * (the ids of the attachments and volumes records hold on this host) stay whatever they lead
   * to: a device's name is reused by the kernel for the next disk, which another attachment may
   * have published.
   */
  unpublishOrphan?(volumeId: string, device: Device, options?: UnpublishOrphanOptions): Promise<void>;
  /**
   * A guest consumer: every disk the server's guest has now, whoever plugged it, by serial (the
   * hypervisor's view: QEMU's qdev tree, the live domain XML); `undefined` when the guest does not
   * run (a shut-off guest holds nothing, and its disks are not "missing"). `berth reconcile`
   * compares it with the attachments. A consumer without it has no guest to look into.
   */
  guestDisks?(server: Server): Promise<GuestDisk[] | undefined>;
  /**
   * A guest consumer: unplug `disk` (one `guestDisks` listed) from the server's guest and wait
   * until the guest has let go, as `unpublish` does (TIMEOUT with `details.guestHoldsDevice`
   * when it does not); then drop what the hypervisor held for it (QEMU's berth block node). The
   * host side (the host device, `/dev/berth` links) is not touched. Succeeds when it is already
   * gone or the guest does not run. Reconcile calls it only for a disk whose serial is a berth
   * volume's id that no attachment of the server accounts for.
   */
  unplugGuestDisk?(server: Server, disk: GuestDisk): Promise<void>;
  /**
   * What is wrong on this host with what `publish` made for `attachment` (its recorded device, as
   * the machine sees it): one line naming each name that is missing or leads elsewhere, or
   * `undefined` when everything is as `publish` left it. `berth reconcile` asks it for every
   * attached attachment and publishes again where it answers something (`attachment_not_published`):
   * the host consumer's `/dev/berth` links, which something outside berth may remove or re-point
   * (a script, a `tmpfiles` rule) while the device is connected. Only reads. A guest consumer has
   * `guestDisks` for this; a consumer without either is not checked.
   */
  checkPublication?(server: Server, attachment: Attachment): Promise<string | undefined>;
  check?(): Promise<CheckResult>;
}
