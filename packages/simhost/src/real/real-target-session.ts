import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { BerthError } from '@berth/core';
import type { CommandResult, CommandRunner, DeviceWaiter } from '@berth/host';
import type { LunInquiry, TargetSession } from '../target-access.js';
import type { LibiscsiClient, LibiscsiEndpoint } from './libiscsi-client.js';
import {
  encodeSamLun,
  parseDeviceIdentification,
  parseIscsiLs,
  parseReadCapacity16,
  parseStandardInquiry,
  parseUnitSerialNumber,
  type StandardInquiry,
} from './libiscsi-output.js';
import { classifyLoginFailure } from './login-failure.js';
import { attachLoop, detachLoop, loopSizeBytes, setLoopCapacity } from './loop-device.js';
import { RealLunDisk, type LunDiskOwner } from './real-lun-disk.js';
import type { ValidLoginRequest } from './schemas.js';
import { StorageDaemon } from './storage-daemon.js';
import { identityFromInquiry, type LunIdentity } from './tgt-identity.js';

/** What a session needs from the `RealTargetAccess` that made it. */
export interface RealAccessContext {
  runner: CommandRunner;
  waiter: DeviceWaiter;
  libiscsi: LibiscsiClient;
  /** Deadline of one-shot commands (losetup, umount), in ms. */
  commandTimeoutMs: number;
  /** Deadline of qemu-storage-daemon start, stop and QMP commands, in ms. */
  daemonTimeoutMs: number;
  qsdBinary?: string;
  /** The tid of a target, when its LUNs no longer carry tgtd's default names. */
  tidOf?: (iqn: string) => number | undefined;
  /** A new empty directory for one daemon (under the access's work directory). */
  makeDaemonDir(): Promise<string>;
  /** Called once the session has logged out. */
  forget(session: RealTargetSession): void;
}

// A LUN that does not exist fails after the login with this sense (fixture iscsi-inq-missing-lun).
const NO_SUCH_LUN = /LOGICAL_UNIT_NOT_SUPPORTED/;

/**
 * One logged-in session. libiscsi tools check and describe the LUNs; a disk is a FUSE export
 * of the LUN in a qemu-storage-daemon started on the first `openLun` and stopped when the last disk
 * of the session closes, with a loop device on the FUSE file. Opening, closing and logout run one
 * at a time per session, so the daemon is never stopped under a disk being opened.
 */
export class RealTargetSession implements TargetSession, LunDiskOwner {
  readonly portal: string;
  readonly iqn: string;
  readonly initiator: string;
  private readonly endpoint: LibiscsiEndpoint;
  private readonly disks = new Set<RealLunDisk>();
  private daemon: StorageDaemon | undefined;
  private daemonDir: string | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private loggedOut = false;
  private nextDisk = 1;

  constructor(
    private readonly ctx: RealAccessContext,
    request: ValidLoginRequest,
  ) {
    this.portal = request.portal;
    this.iqn = request.iqn;
    this.initiator = request.initiator;
    this.endpoint = { portal: request.portal, initiator: request.initiator, ...(request.auth ? { auth: request.auth } : {}) };
  }

  /** The pid of the session's qemu-storage-daemon, while one runs. */
  get daemonPid(): number | undefined {
    return this.daemon?.pid;
  }

  /** The disks open right now. */
  get openDisks(): readonly RealLunDisk[] {
    return [...this.disks];
  }

  /** REPORT LUNS through `iscsi-ls -s`, as target LUN numbers (LUN 0, the controller, included). */
  async reportLuns(): Promise<number[]> {
    this.assertLoggedIn();
    // iscsi-ls opens a discovery session first, and tgtd answers no mutual CHAP there ("did not
    // return CHAP_N during SECNEG"): the target's credentials were checked at login, so list the
    // LUNs with the initiator's alone.
    const { auth, ...rest } = this.endpoint;
    const endpoint = auth ? { ...rest, auth: { method: auth.method, username: auth.username, password: auth.password } } : rest;
    const result = await this.ctx.libiscsi.ls(endpoint, true);
    const target = parseIscsiLs(result.stdout).find((t) => t.iqn === this.iqn);
    if (!target) throw this.toolError(`target ${this.iqn} is not listed at ${this.portal}`, result);
    if (target.error !== undefined) throw this.toolError(`REPORT LUNS on ${this.iqn} failed: ${target.error}`, result);
    return target.luns.map((l) => l.lun).sort((a, b) => a - b);
  }

  /** Open the disk behind `lun`; undefined when the LUN does not exist or is not a disk (LUN 0). */
  openLun(lun: number): Promise<RealLunDisk | undefined> {
    return this.serialize(() => this.openLunNow(lun));
  }

  /** Close every disk of the session (and so its daemon); later calls do nothing. */
  logout(): Promise<void> {
    return this.serialize(async () => {
      if (this.loggedOut) return;
      this.loggedOut = true;
      const errors: unknown[] = [];
      for (const disk of [...this.disks]) await this.closeDiskNow(disk).catch((e: unknown) => errors.push(e));
      await this.stopDaemon().catch((e: unknown) => errors.push(e));
      this.ctx.forget(this);
      if (errors.length > 0) throw errors[0];
    });
  }

  /** @internal LunDiskOwner: close one disk. */
  closeDisk(disk: RealLunDisk): Promise<void> {
    return this.serialize(() => this.closeDiskNow(disk));
  }

  /** @internal LunDiskOwner: follow a LUN that grew. */
  refreshDisk(disk: RealLunDisk): Promise<number> {
    return this.serialize(async () => {
      if (disk.closed) throw new BerthError('INVALID_STATE', `the disk of LUN ${disk.lun} on ${this.iqn} is closed`);
      const capacity = await this.capacityOf(disk.lun);
      if (capacity !== disk.sizeBytes) {
        const daemon = this.daemon;
        if (!daemon) throw new BerthError('INTERNAL', 'an open disk has no qemu-storage-daemon');
        // block_resize re-reads the LUN's capacity (qemu's iscsi driver refuses to grow past it).
        await daemon.resizeNode(disk.plumbing.exportId, capacity);
        // The kernel caches the FUSE file's attributes for the 1 s qemu grants and the loop device
        // reads the cached size: stat until the new size shows, then make the loop follow.
        const { fuseFile } = disk.plumbing;
        await this.ctx.waiter.waitUntil(path.dirname(fuseFile), async () => ((await stat(fuseFile)).size === capacity ? true : undefined), {
          timeoutMs: this.ctx.daemonTimeoutMs,
          what: `${fuseFile} to show the new size ${capacity}`,
        });
        await setLoopCapacity(this.ctx.runner, disk.plumbing.loopDevice, this.ctx.commandTimeoutMs);
      }
      const size = await loopSizeBytes(disk.plumbing.loopDevice);
      if (size !== capacity) throw new BerthError('DRIVER_ERROR', `${disk.plumbing.loopDevice} is ${size} bytes after refresh, LUN ${disk.lun} of ${this.iqn} has ${capacity}`);
      return size;
    });
  }

  private serialize<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work, work);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private assertLoggedIn(): void {
    if (this.loggedOut) throw new BerthError('INVALID_STATE', `the session to ${this.iqn} at ${this.portal} is logged out`);
  }

  private toolError(message: string, result: CommandResult): BerthError {
    const failure = classifyLoginFailure(result);
    return new BerthError(failure?.exitCode === 24 ? 'AUTH_FAILED' : 'DRIVER_ERROR', failure ? `${message}: ${failure.message}` : message, {
      details: { portal: this.portal, iqn: this.iqn, command: result.command, exitCode: result.exitCode },
    });
  }

  private async capacityOf(lun: number): Promise<number> {
    const result = await this.ctx.libiscsi.readCapacity16(this.endpoint, this.iqn, lun);
    const capacity = parseReadCapacity16(result.stdout);
    if (result.exitCode !== 0 || !capacity) throw this.toolError(`READ CAPACITY(16) of LUN ${lun} on ${this.iqn} failed`, result);
    return capacity.totalBytes;
  }

  /**
   * The INQUIRY identity of any LUN (used by the kernel model for LUNs without a disk, such as
   * tgtd's controller at LUN 0); undefined when the target has no such LUN.
   */
  async inquiry(lun: number): Promise<LunInquiry | undefined> {
    this.assertLoggedIn();
    const probed = await this.probe(lun);
    if (!probed) return undefined;
    const { type, vendor, model, rev, wwid, vpdPg83, vpdPg80 } = probed.identity;
    return { type, vendor, model, rev, wwid, vpdPg83, vpdPg80 };
  }

  /** INQUIRY, VPD 0x80 and 0x83 of a LUN through libiscsi; undefined when the LUN does not exist. */
  private async probe(lun: number): Promise<{ inquiry: StandardInquiry; identity: LunIdentity } | undefined> {
    const std = await this.ctx.libiscsi.inquiry(this.endpoint, this.iqn, lun);
    if (std.exitCode !== 0 && NO_SUCH_LUN.test(std.stderr)) return undefined;
    const inquiry = parseStandardInquiry(std.stdout);
    if (std.exitCode !== 0 || !inquiry) throw this.toolError(`INQUIRY of LUN ${lun} on ${this.iqn} failed`, std);
    const [vpd80, vpd83] = await Promise.all([
      this.ctx.libiscsi.inquiry(this.endpoint, this.iqn, lun, 0x80),
      this.ctx.libiscsi.inquiry(this.endpoint, this.iqn, lun, 0x83),
    ]);
    const serialField = parseUnitSerialNumber(vpd80.stdout);
    if (vpd80.exitCode !== 0 || serialField === undefined) throw this.toolError(`VPD page 0x80 of LUN ${lun} on ${this.iqn} failed`, vpd80);
    if (vpd83.exitCode !== 0) throw this.toolError(`VPD page 0x83 of LUN ${lun} on ${this.iqn} failed`, vpd83);
    const tid = this.ctx.tidOf?.(this.iqn);
    const identity = identityFromInquiry({
      lun,
      inquiry,
      serialField,
      designators: parseDeviceIdentification(vpd83.stdout),
      ...(tid === undefined ? {} : { tid }),
    });
    return { inquiry, identity };
  }

  private async openLunNow(lun: number): Promise<RealLunDisk | undefined> {
    this.assertLoggedIn();
    const probed = await this.probe(lun);
    if (!probed || probed.inquiry.deviceType !== 'DIRECT_ACCESS') return undefined;
    const { identity } = probed;
    const sizeBytes = await this.capacityOf(lun);

    const daemon = await this.ensureDaemon();
    const seq = this.nextDisk++;
    const exportId = `lun${lun}-${seq}`;
    const fuseFile = path.join(this.daemonDir ?? '', `${exportId}.fuse`);
    const auth = this.endpoint.auth;
    try {
      await daemon.addIscsiExport({
        id: exportId,
        portal: this.portal,
        iqn: this.iqn,
        wireLun: encodeSamLun(lun),
        initiator: this.initiator,
        ...(auth ? { chap: { username: auth.username, password: auth.password } } : {}),
        mountpoint: fuseFile,
      });
    } catch (error) {
      await this.stopDaemonIfIdle();
      throw new BerthError('DRIVER_ERROR', `qemu-storage-daemon could not open LUN ${lun} of ${this.iqn}: ${error instanceof Error ? error.message : String(error)}`, {
        cause: error,
        details: { portal: this.portal, iqn: this.iqn, lun },
      });
    }
    let loopDevice: string;
    try {
      loopDevice = await attachLoop(this.ctx.runner, fuseFile, this.ctx.commandTimeoutMs);
    } catch (error) {
      await daemon.removeIscsiExport(exportId, fuseFile).catch(() => undefined);
      await this.stopDaemonIfIdle();
      throw error;
    }
    const disk = new RealLunDisk(this, lun, identity, sizeBytes, { exportId, fuseFile, loopDevice });
    this.disks.add(disk);
    const loopSize = await loopSizeBytes(loopDevice).catch(() => sizeBytes);
    if (loopSize !== sizeBytes) {
      await this.closeDiskNow(disk).catch(() => undefined);
      throw new BerthError('DRIVER_ERROR', `${loopDevice} is ${loopSize} bytes but LUN ${lun} of ${this.iqn} has ${sizeBytes}`);
    }
    return disk;
  }

  private async closeDiskNow(disk: RealLunDisk): Promise<void> {
    if (disk.closed) return;
    const { loopDevice, fuseFile, exportId } = disk.plumbing;
    // The loop device first: the FUSE file cannot go while the loop holds it.
    await detachLoop(this.ctx.runner, this.ctx.waiter, loopDevice, fuseFile, this.ctx.commandTimeoutMs);
    await this.daemon?.removeIscsiExport(exportId, fuseFile);
    disk.closed = true;
    this.disks.delete(disk);
    await this.stopDaemonIfIdle();
  }

  private async ensureDaemon(): Promise<StorageDaemon> {
    if (this.daemon?.running) return this.daemon;
    if (this.daemon) await this.stopDaemon();
    const dir = await this.ctx.makeDaemonDir();
    this.daemonDir = dir;
    try {
      this.daemon = await StorageDaemon.start({
        dir,
        runner: this.ctx.runner,
        waiter: this.ctx.waiter,
        startTimeoutMs: this.ctx.daemonTimeoutMs,
        qmpTimeoutMs: this.ctx.daemonTimeoutMs,
        ...(this.ctx.qsdBinary ? { binary: this.ctx.qsdBinary } : {}),
      });
    } catch (error) {
      this.daemonDir = undefined;
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
    return this.daemon;
  }

  private async stopDaemonIfIdle(): Promise<void> {
    if (this.disks.size === 0) await this.stopDaemon();
  }

  private async stopDaemon(): Promise<void> {
    const daemon = this.daemon;
    const dir = this.daemonDir;
    this.daemon = undefined;
    this.daemonDir = undefined;
    await daemon?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  }
}
