/**
 * The seam between the simulated kernel (sessions, SCSI hosts, sd devices, udev links) and what
 * stands behind a session: a modelled target (pure simulation) or a real tgtd reached through
 * libiscsi and qemu-storage-daemon (real-backed mode). The kernel model calls these; it never
 * knows which one it has.
 */

/** CHAP settings of a login, from the node record (open-iscsi's `node.session.auth.*`). */
export interface LoginAuth {
  method: 'CHAP';
  username: string;
  password: string;
  /** Mutual CHAP: the target's credentials (`username_in`/`password_in`). */
  usernameIn?: string;
  passwordIn?: string;
}

/** What a login needs. */
export interface LoginRequest {
  /** `host:port`, IPv6 host in brackets. */
  portal: string;
  iqn: string;
  /** The initiator IQN (from `/etc/iscsi/initiatorname.iscsi` or the iface). */
  initiator: string;
  auth?: LoginAuth;
  signal?: AbortSignal;
}

/**
 * The outcome of a login, with the iscsiadm exit code a real iscsid would give (KERNEL-MODEL §1):
 * 8 unreachable portal / connection timeout, 19 unknown target or ACL refusal, 24 CHAP failure.
 */
export type LoginResult =
  | { ok: true; /** target portal group tag sent by the target (1 for tgtd) */ tpgt: number }
  | { ok: false; exitCode: 8 | 19 | 24 | 4 | 5; message: string };

/** A logged-in session as the target side sees it. */
export interface TargetSession {
  readonly portal: string;
  readonly iqn: string;
  readonly initiator: string;
  /** LUNs the target reports (REPORT LUNS), including LUN 0 (the controller, no block device). */
  reportLuns(): Promise<number[]>;
  /** Open the disk behind a LUN; undefined when the target has no such LUN or it is not a disk. */
  openLun(lun: number): Promise<LunDisk | undefined>;
  /**
   * INQUIRY of a LUN that is not a disk (tgtd's LUN 0, the controller); optional: without it the
   * kernel model shows tgtd's controller strings and no wwid.
   */
  inquiry?(lun: number): Promise<LunInquiry | undefined>;
  /** End the session (close every disk opened through it). */
  logout(): Promise<void>;
  /**
   * Whether the target still answers within `timeoutMs` (the kernel's NOP-Out ping); optional: a
   * modelled target is never lost unless a fault says so, and has none.
   */
  ping?(timeoutMs: number): Promise<boolean>;
  /**
   * recovery_tmo passed with the target unreachable: every disk of the session fails its I/O from
   * now on, what is queued included, as the kernel fails a transport-offline device's. The disks
   * stay until logout closes them.
   */
  failIo?(): Promise<void>;
  /**
   * The target answers again after `failIo` (iscsid's reconnect after recovery_tmo): bring every
   * disk of the session back, each on the same backing device (its `/dev/sdX` node and numbers
   * stay), so new I/O works again; what failed while the session was expired stays failed. True
   * once every disk is back; false (nothing to do yet, try again at the next answer) when one
   * cannot come back now, e.g. its backing device is still held open over the dead one.
   */
  revive?(): Promise<boolean>;
}

/** What INQUIRY (and VPD) says of a LUN that has no block device. */
export interface LunInquiry {
  /** SCSI peripheral device type (12 for a storage array controller). */
  type: number;
  vendor: string;
  model: string;
  rev: string;
  wwid?: string;
  vpdPg83?: Buffer;
  vpdPg80?: Buffer;
}

/** A disk as the kernel model exposes it as `/dev/sdX`. */
export interface LunDisk {
  /** A real path whose bytes are the LUN's: a real block device (`/dev/loopN`) or a regular file. */
  backingPath: string;
  /** True when `backingPath` is a block device (the kernel model then mknods `/dev/sdX` to it). */
  isBlockDevice: boolean;
  sizeBytes: number;
  /** INQUIRY strings, padded as sysfs shows them (`IET     `, `VIRTUAL-DISK    `, `0001`). */
  vendor: string;
  model: string;
  rev: string;
  /** The kernel's `wwid` (`naa.6...`), and raw VPD pages 0x83 and 0x80 with their 4-byte headers. */
  wwid: string;
  vpdPg83: Buffer;
  vpdPg80: Buffer;
  /** Re-read the size (after the target grew the LUN). */
  refresh(): Promise<void>;
  /** Release the disk (detach loop, remove FUSE export). Idempotent. */
  close(): Promise<void>;
}

/** Opens sessions: the simulated SAN or a real tgtd. */
export interface TargetAccess {
  login(request: LoginRequest): Promise<{ result: LoginResult; session?: TargetSession }>;
  /** SendTargets discovery at `portal`: `[{portal, tpgt, iqn}]`, or an error exit code. */
  discover(portal: string, initiator: string, auth?: LoginAuth): Promise<
    { ok: true; targets: Array<{ portal: string; tpgt: number; iqn: string }> } | { ok: false; exitCode: number; message: string }
  >;
  /** Release everything (every session and disk). */
  close(): Promise<void>;
}
