import type { LunDisk } from '../target-access.js';
import type { LunIdentity } from './tgt-identity.js';

/** What a disk needs from the session that opened it. */
export interface LunDiskOwner {
  /** Re-read the LUN's capacity on the target and grow (or shrink) the disk to it; returns the new size. */
  refreshDisk(disk: RealLunDisk): Promise<number>;
  /** Detach the loop device, remove the FUSE export and the iSCSI node (idempotent). */
  closeDisk(disk: RealLunDisk): Promise<void>;
}

/** Where a disk's bytes travel: loop device → FUSE file → qemu-storage-daemon node → iSCSI LUN. */
export interface LunDiskPlumbing {
  /** Names the daemon's QMP objects for this disk. */
  exportId: string;
  /** The FUSE mount point the loop device is attached to. */
  fuseFile: string;
  /** `/dev/loopN`. */
  loopDevice: string;
}

/** A tgtd LUN reached through qemu-storage-daemon, seen as a real loop device. */
export class RealLunDisk implements LunDisk {
  readonly backingPath: string;
  readonly isBlockDevice = true;
  sizeBytes: number;
  readonly vendor: string;
  readonly model: string;
  readonly rev: string;
  readonly wwid: string;
  readonly vpdPg83: Buffer;
  readonly vpdPg80: Buffer;
  /** True once `close()` has finished. */
  closed = false;

  constructor(
    private readonly owner: LunDiskOwner,
    /** The target LUN number. */
    readonly lun: number,
    identity: LunIdentity,
    sizeBytes: number,
    /**
     * The loop device, FUSE file and QMP ids behind the disk. The loop device stays the disk's for
     * good; the FUSE file and QMP ids change when a revived session re-exports the LUN from a new daemon.
     */
    public plumbing: LunDiskPlumbing,
  ) {
    this.backingPath = plumbing.loopDevice;
    this.sizeBytes = sizeBytes;
    this.vendor = identity.vendor;
    this.model = identity.model;
    this.rev = identity.rev;
    this.wwid = identity.wwid;
    this.vpdPg83 = identity.vpdPg83;
    this.vpdPg80 = identity.vpdPg80;
  }

  /** Re-read the LUN's size on the target and make the loop device follow (`losetup --set-capacity`). */
  async refresh(): Promise<void> {
    this.sizeBytes = await this.owner.refreshDisk(this);
  }

  /** Detach the loop device and remove the FUSE export and the iSCSI session behind it. Idempotent. */
  async close(): Promise<void> {
    await this.owner.closeDisk(this);
  }
}
