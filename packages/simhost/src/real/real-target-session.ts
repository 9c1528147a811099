import { rm } from 'node:fs/promises';
import path from 'node:path';
import { BerthError } from '@berth/core';
import { stopDaemon as stopDaemonByPidFile, type CommandResult, type CommandRunner, type DeviceWaiter, type HostFs } from '@berth/host';
import {
  addFuseExport,
  addIscsiNode,
  attachFuseLoop,
  detachFuseLoop,
  isQmpConnectionLost,
  loopInfo,
  removeFuseExport,
  removeIscsiNode,
  setLoopCapacity,
  StorageDaemon,
  storageDaemonPaths,
  unmountFuseUnder,
  waitForFuseSize,
  wireLun,
  writeSecretFile,
  zEmptyReturn,
  type QmpClient,
} from '@berth/qemu';
import type { LunInquiry, TargetSession } from '../target-access.js';
import type { LibiscsiClient, LibiscsiEndpoint } from './libiscsi-client.js';
import {
  parseDeviceIdentification,
  parseIscsiLs,
  parseReadCapacity16,
  parseStandardInquiry,
  parseUnitSerialNumber,
  type StandardInquiry,
} from './libiscsi-output.js';
import { classifyLoginFailure } from './login-failure.js';
import { pingPortal } from '@berth/iscsi';
import { RealLunDisk, type LunDiskOwner } from './real-lun-disk.js';
import type { ValidLoginRequest } from './schemas.js';
import { identityFromInquiry, type LunIdentity } from './tgt-identity.js';

/** What a session needs from the `RealTargetAccess` that made it. */
export interface RealAccessContext {
  runner: CommandRunner;
  waiter: DeviceWaiter;
  fs: HostFs;
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
  /** Called when a logout left disks it could not close (their loop devices held open): try again later. */
  linger(session: RealTargetSession): void;
}

// A LUN that does not exist fails after the login with this sense (fixture iscsi-inq-missing-lun).
const NO_SUCH_LUN = /LOGICAL_UNIT_NOT_SUPPORTED/;

/** How many LUNs `probeLuns` asks about when `iscsi-ls` cannot list the target. */
const PROBED_LUNS = 8;

/** The QMP names of one disk's objects in its session's daemon. */
function qmpNames(exportId: string): { node: string; exportId: string; secretId: string } {
  return { node: `node-${exportId}`, exportId: `exp-${exportId}`, secretId: `sec-${exportId}` };
}

/**
 * One logged-in session. libiscsi tools check and describe the LUNs; a disk is a FUSE export
 * of the LUN in a qemu-storage-daemon (`@berth/qemu`) started on the first `openLun` and stopped
 * when the last disk of the session closes, with a loop device on the FUSE file. The session keeps
 * one QMP connection to its daemon: its closing is how a daemon that died is noticed. Opening,
 * refreshing and logout run one at a time per session, so the daemon is never stopped under a
 * disk being opened; closes of different disks run side by side (each its own loop device and
 * QMP objects; the last one to finish stops the daemon), after what came before them and before
 * what comes after.
 */
export class RealTargetSession implements TargetSession, LunDiskOwner {
  readonly portal: string;
  readonly iqn: string;
  readonly initiator: string;
  private readonly endpoint: LibiscsiEndpoint;
  private readonly disks = new Set<RealLunDisk>();
  private daemon: StorageDaemon | undefined;
  private qmp: QmpClient | undefined;
  private pid: number | undefined;
  private daemonDir: string | undefined;
  /** The last exclusive call (open, refresh, logout): what comes after waits for it. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Closes running side by side since the last exclusive call: the next one waits for them. */
  private readonly closing = new Map<RealLunDisk, Promise<void>>();
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
    return this.daemon ? this.pid : undefined;
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
    if (!target && result.exitCode !== 0) {
      // iscsi-ls logs in to every target the portal lists, with this session's credentials, and
      // stops at the first that refuses them: another volume's target (CHAP per volume) exported
      // to the same initiator — two volumes attached at once. The kernel asks REPORT LUNS inside
      // its own session; this target's LUNs are found by asking each LUN here instead.
      const probed = await this.probeLuns();
      if (probed !== undefined) return probed;
    }
    if (!target) throw this.toolError(`target ${this.iqn} is not listed at ${this.portal}`, result);
    if (target.error !== undefined) throw this.toolError(`REPORT LUNS on ${this.iqn} failed: ${target.error}`, result);
    return target.luns.map((l) => l.lun).sort((a, b) => a - b);
  }

  /**
   * This target's LUNs 0 to `PROBED_LUNS - 1`, by a standard INQUIRY of each (berth's tgt targets
   * have LUN 0, the controller, and LUN 1); undefined when LUN 0 does not answer either (this
   * target's own login fails: the listing's error is the one to report).
   */
  private async probeLuns(): Promise<number[] | undefined> {
    const answers = await Promise.all(
      Array.from({ length: PROBED_LUNS }, async (_, lun) => {
        const std = await this.ctx.libiscsi.inquiry(this.endpoint, this.iqn, lun);
        return std.exitCode === 0 && parseStandardInquiry(std.stdout) !== undefined ? lun : undefined;
      }),
    );
    if (answers[0] === undefined) return undefined;
    return answers.filter((lun): lun is number => lun !== undefined);
  }

  /** Open the disk behind `lun`; undefined when the LUN does not exist or is not a disk (LUN 0). */
  openLun(lun: number): Promise<RealLunDisk | undefined> {
    return this.serialize(() => this.openLunNow(lun));
  }

  /**
   * Close every disk of the session (and so its daemon). A disk whose loop device something still
   * holds open is not forgotten: it stays, with the daemon that serves it (the holder's I/O still
   * reaches the target), the session lingers (`ctx.linger`), and the next call tries again; once
   * every disk closed, later calls do nothing.
   */
  logout(): Promise<void> {
    return this.serialize(async () => {
      if (this.loggedOut && this.disks.size === 0) return;
      this.loggedOut = true;
      const errors: unknown[] = [];
      for (const disk of [...this.disks]) await this.closeDiskNow(disk).catch((e: unknown) => errors.push(e));
      if (this.disks.size > 0) {
        this.ctx.linger(this);
        throw errors[0];
      }
      await this.stopDaemon().catch((e: unknown) => errors.push(e));
      this.ctx.forget(this);
      if (errors.length > 0) throw errors[0];
    });
  }

  /** Whether tgtd answers at the session's portal (the simulated kernel's NOP-Out; `@berth/iscsi`'s `pingPortal`). */
  ping(timeoutMs: number): Promise<boolean> {
    return pingPortal(this.portal, this.initiator, timeoutMs);
  }

  /**
   * recovery_tmo passed (the kernel model says so): the session's disks fail their I/O. The daemon
   * is killed: its FUSE connections end with it, so every request it had not answered — queued
   * behind libiscsi, which reconnects to a dead portal for ever — fails, and so does every later
   * one, through the loop devices as I/O errors. A gentler end (QMP `quit`) would wait on the very
   * requests that hang. Closing the disks afterwards finds the daemon dead and unmounts its exports.
   */
  failIo(): Promise<void> {
    return this.serialize(async () => {
      if (this.liveQmp() === undefined) return;
      await this.killDaemon();
    });
  }

  /**
   * SIGKILL the session's daemon now and wait (bounded) until it is gone — by its pid file, which
   * a recycled pid cannot fool — and close the session's monitor connection, so `liveQmp` says it
   * is dead. A SIGSTOPped or hung daemon dies too (SIGKILL needs no cooperation). Its FUSE mounts
   * are left for `unmountFuseUnder` (lazily, as a dead daemon's must be).
   */
  private async killDaemon(): Promise<void> {
    const dir = this.daemonDir;
    this.qmp?.close();
    if (dir === undefined) return;
    await stopDaemonByPidFile(storageDaemonPaths(dir).pidFile, { timeoutMs: 0, signal: 'SIGKILL' }).catch((error: unknown) => {
      console.error(`simhost: qemu-storage-daemon in ${dir}: ${error instanceof Error ? error.message : String(error)}`);
    });
  }

  /**
   * The target answers again after `failIo` (the kernel model's iscsid reconnecting): the dead
   * daemon's loop devices are freed (each disk's own, checked: a held one makes this false and
   * nothing more is done), the dead daemon's mounts and directory go, a new daemon exports every
   * disk's LUN again and each disk's loop device is attached to its new FUSE file under the same
   * name (`losetup <the same /dev/loopN>`: the simulated `/dev/sdX`, a node of its major:minor,
   * stays valid). Taken meanwhile by someone else, losetup refuses (busy) and nothing is taken
   * over: the new daemon is killed, the disks stay failed, and this throws. True when done (or
   * nothing was killed).
   */
  revive(): Promise<boolean> {
    return this.serialize(async () => {
      if (this.loggedOut) return false;
      if (this.liveQmp() !== undefined) return true;
      const disks = [...this.disks];
      const deps = { runner: this.ctx.runner, waiter: this.ctx.waiter, fs: this.ctx.fs };
      for (const disk of disks) {
        const { loopDevice, fuseFile } = disk.plumbing;
        if ((await detachFuseLoop(deps, loopDevice, fuseFile, { timeoutMs: this.ctx.commandTimeoutMs })) === 'held-open') return false;
      }
      await this.stopDaemon();
      if (disks.length === 0) return true;
      try {
        const qmp = await this.ensureDaemon();
        for (const disk of disks) {
          const exportId = `lun${disk.lun}-${this.nextDisk++}`;
          const fuseFile = path.join(this.daemonDir ?? '', `${exportId}.fuse`);
          await this.addExport(qmp, disk.lun, exportId, fuseFile);
          const { loopDevice } = disk.plumbing;
          // The FUSE file is the disk's from here: a failure below leaves it to close() (dead-daemon path).
          disk.plumbing = { exportId, fuseFile, loopDevice };
          await attachFuseLoop(this.ctx.runner, fuseFile, { readOnly: false, device: loopDevice, timeoutMs: this.ctx.commandTimeoutMs });
        }
      } catch (error) {
        // Not half back: the disks stay failed (their loop devices over a dead export, or free).
        await this.killDaemon();
        throw error;
      }
      return true;
    });
  }

  /** The loop devices of disks a logout could not close (held open), while they are still bound. */
  get heldLoopDevices(): string[] {
    return [...this.disks].map((disk) => disk.plumbing.loopDevice);
  }

  /**
   * The last resort (the access closing: the simulated host stops) for disks still held open:
   * each loop device is detached the kernel's way (`losetup --detach`: autoclear, the kernel frees
   * it at its holder's last close, never left bound for good), the daemon stops, the session is
   * forgotten. Returns what it had to leave to the kernel, for the caller to report.
   */
  abandonHeld(): Promise<string[]> {
    return this.serialize(async () => {
      const left: string[] = [];
      for (const disk of [...this.disks]) {
        const { loopDevice } = disk.plumbing;
        await this.ctx.runner.run('losetup', ['--detach', loopDevice], { timeoutMs: this.ctx.commandTimeoutMs, reject: false }).catch(() => undefined);
        left.push(loopDevice);
        disk.closed = true;
        this.disks.delete(disk);
      }
      await this.stopDaemon().catch(() => undefined);
      this.ctx.forget(this);
      return left;
    });
  }

  /** @internal LunDiskOwner: close one disk. */
  closeDisk(disk: RealLunDisk): Promise<void> {
    const running = this.closing.get(disk);
    if (running) return running;
    const close = (): Promise<void> => this.closeDiskNow(disk);
    const run = this.queue.then(close, close);
    this.closing.set(disk, run);
    void run.catch(() => undefined).finally(() => {
      if (this.closing.get(disk) === run) this.closing.delete(disk);
    });
    return run;
  }

  /** @internal LunDiskOwner: follow a LUN that grew. */
  refreshDisk(disk: RealLunDisk): Promise<number> {
    return this.serialize(async () => {
      if (disk.closed) throw new BerthError('INVALID_STATE', `the disk of LUN ${disk.lun} on ${this.iqn} is closed`);
      const capacity = await this.capacityOf(disk.lun);
      if (capacity !== disk.sizeBytes) {
        const qmp = this.liveQmp();
        if (!qmp) throw new BerthError('DRIVER_ERROR', `the qemu-storage-daemon behind ${disk.plumbing.loopDevice} is not running`, { hint: 'close the disk and open it again' });
        // block_resize re-reads the LUN's capacity (qemu's iscsi driver refuses to grow past it).
        await qmp.request('block_resize', { 'node-name': qmpNames(disk.plumbing.exportId).node, size: capacity }, zEmptyReturn, { timeoutMs: this.ctx.daemonTimeoutMs });
        await waitForFuseSize(this.ctx.waiter, disk.plumbing.fuseFile, capacity, { timeoutMs: this.ctx.daemonTimeoutMs });
        await setLoopCapacity(this.ctx.runner, disk.plumbing.loopDevice, { timeoutMs: this.ctx.commandTimeoutMs });
      }
      const size = (await loopInfo(this.ctx.fs, disk.plumbing.loopDevice))?.sizeBytes ?? 0;
      if (size !== capacity) throw new BerthError('DRIVER_ERROR', `${disk.plumbing.loopDevice} is ${size} bytes after refresh, LUN ${disk.lun} of ${this.iqn} has ${capacity}`);
      return size;
    });
  }

  private serialize<T>(work: () => Promise<T>): Promise<T> {
    const before = Promise.allSettled([this.queue, ...this.closing.values()]);
    const run = before.then(work);
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

    const qmp = await this.ensureDaemon();
    const seq = this.nextDisk++;
    const exportId = `lun${lun}-${seq}`;
    const fuseFile = path.join(this.daemonDir ?? '', `${exportId}.fuse`);
    try {
      await this.addExport(qmp, lun, exportId, fuseFile);
    } catch (error) {
      await this.stopDaemonIfIdle();
      throw new BerthError('DRIVER_ERROR', `qemu-storage-daemon could not open LUN ${lun} of ${this.iqn}: ${error instanceof Error ? error.message : String(error)}`, {
        cause: error,
        details: { portal: this.portal, iqn: this.iqn, lun },
      });
    }
    let loopDevice: string;
    try {
      loopDevice = await attachFuseLoop(this.ctx.runner, fuseFile, { readOnly: false, timeoutMs: this.ctx.commandTimeoutMs });
    } catch (error) {
      await this.removeExport(exportId, fuseFile).catch(() => undefined);
      await this.stopDaemonIfIdle();
      throw error;
    }
    const disk = new RealLunDisk(this, lun, identity, sizeBytes, { exportId, fuseFile, loopDevice });
    this.disks.add(disk);
    const loopSize = (await loopInfo(this.ctx.fs, loopDevice).catch(() => undefined))?.sizeBytes ?? sizeBytes;
    if (loopSize !== sizeBytes) {
      await this.closeDiskNow(disk).catch(() => undefined);
      throw new BerthError('DRIVER_ERROR', `${loopDevice} is ${loopSize} bytes but LUN ${lun} of ${this.iqn} has ${sizeBytes}`);
    }
    return disk;
  }

  /**
   * Log in to the LUN (`blockdev-add` driver iscsi) and export it writable through FUSE on
   * `fuseFile`. CHAP goes in through a 0600 file named in `object-add`, removed right after (qemu
   * has read it by then). qemu's iscsi driver has no mutual CHAP; tgtd does not insist on it, and
   * `login` checked the target's credentials. On failure what was made is removed again.
   */
  private async addExport(qmp: QmpClient, lun: number, exportId: string, fuseFile: string): Promise<void> {
    const names = qmpNames(exportId);
    const options = { timeoutMs: this.ctx.daemonTimeoutMs };
    const auth = this.endpoint.auth;
    const secretFile = path.join(this.daemonDir ?? '', `${names.secretId}.secret`);
    if (auth) await writeSecretFile(secretFile, auth.password);
    try {
      await addIscsiNode(
        qmp,
        {
          nodeName: names.node,
          portal: this.portal,
          iqn: this.iqn,
          lun: wireLun(lun),
          initiator: this.initiator,
          ...(auth ? { chap: { username: auth.username, secretId: names.secretId, secretFile } } : {}),
          readOnly: false,
        },
        options,
      );
    } finally {
      await rm(secretFile, { force: true });
    }
    try {
      await addFuseExport(qmp, { id: names.exportId, nodeName: names.node, mountpoint: fuseFile, writable: true }, options);
    } catch (error) {
      await this.removeExport(exportId, fuseFile).catch(() => undefined);
      throw error;
    }
  }

  /**
   * Remove a disk's export and node (which ends its iSCSI session) and its mount point file.
   * Parts already gone are skipped. A dead daemon cannot unmount its export ("Transport endpoint
   * is not connected"): its mount is unmounted lazily instead. A daemon killed a moment ago may
   * still look alive (its connection's close not yet read), so a lost connection counts as dead.
   * A daemon that does not answer within `daemonTimeoutMs` (QMP `TIMEOUT`: its main loop hangs,
   * say in a `blockdev-del` whose iSCSI logout waits on a dead tgtd, or it is stopped) is hung:
   * it is killed (the session's other disks fail their I/O, as they would behind it anyway) and
   * counts as dead, so the release ends and nothing waits on it again — before, the disk stayed
   * with the hung daemon, every later close waited out the same deadline, and the daemon outlived
   * the simulated host's stop.
   */
  private async removeExport(exportId: string, fuseFile: string): Promise<void> {
    const names = qmpNames(exportId);
    const qmp = this.liveQmp();
    let dead = qmp === undefined;
    if (qmp) {
      const options = { timeoutMs: this.ctx.daemonTimeoutMs };
      try {
        await removeFuseExport(qmp, names.exportId, options);
        await removeIscsiNode(qmp, names.node, this.endpoint.auth ? names.secretId : undefined, options);
      } catch (error) {
        if (BerthError.is(error) && error.code === 'TIMEOUT') await this.killDaemon();
        else if (!isQmpConnectionLost(error)) throw error;
        dead = true;
      }
    }
    if (dead) await unmountFuseUnder({ fs: this.ctx.fs, runner: this.ctx.runner }, fuseFile, this.ctx.commandTimeoutMs);
    await rm(fuseFile, { force: true });
  }

  private async closeDiskNow(disk: RealLunDisk): Promise<void> {
    if (disk.closed) return;
    const { loopDevice, fuseFile, exportId } = disk.plumbing;
    // The loop device first: the FUSE file cannot go while the loop holds it.
    const deps = { runner: this.ctx.runner, waiter: this.ctx.waiter, fs: this.ctx.fs };
    if ((await detachFuseLoop(deps, loopDevice, fuseFile, { timeoutMs: this.ctx.commandTimeoutMs })) === 'held-open') {
      // Held open, it was left bound as it was (autoclear off): no wait could see it go. The disk
      // stays this session's (and its export with it) until a later try finds it closed.
      throw new BerthError('CONFLICT', `${loopDevice} is still open (something holds it): kept, and released once it is closed`, {
        details: { device: loopDevice, reason: 'held-open' },
      });
    }
    await this.removeExport(exportId, fuseFile);
    disk.closed = true;
    this.disks.delete(disk);
    await this.stopDaemonIfIdle();
  }

  /** The QMP connection to the session's daemon, while the daemon lives (its death closes it). */
  private liveQmp(): QmpClient | undefined {
    return this.qmp && !this.qmp.isClosed ? this.qmp : undefined;
  }

  private async ensureDaemon(): Promise<QmpClient> {
    const live = this.liveQmp();
    if (live) return live;
    if (this.daemon) await this.stopDaemon();
    const dir = await this.ctx.makeDaemonDir();
    const timeoutMs = this.ctx.daemonTimeoutMs;
    const daemon = new StorageDaemon({
      dir,
      waiter: this.ctx.waiter,
      startTimeoutMs: timeoutMs,
      stopTimeoutMs: timeoutMs,
      ...(this.ctx.qsdBinary ? { binary: this.ctx.qsdBinary } : {}),
    });
    this.daemon = daemon;
    this.daemonDir = dir;
    try {
      // A daemon that dies as it starts is started again (`ensureConnected`: qemu 7.2 segfaulted so once in CI).
      const { pid, qmp } = await daemon.ensureConnected({ timeoutMs });
      this.pid = pid;
      this.qmp = qmp;
      // The simulator's own work keeps it alive, not an idle monitor connection.
      this.qmp.unref();
    } catch (error) {
      await this.stopDaemon().catch(() => undefined);
      throw error;
    }
    return this.qmp;
  }

  private async stopDaemonIfIdle(): Promise<void> {
    if (this.disks.size === 0) await this.stopDaemon();
  }

  /**
   * Stop the session's daemon (QMP `quit` over a new connection — a monitor serves one client, so
   * the session's own goes first — and SIGKILL at the deadline), unmount what a killed one left
   * under its directory, and remove the directory.
   */
  private async stopDaemon(): Promise<void> {
    const { daemon, qmp } = this;
    const dir = this.daemonDir;
    this.daemon = undefined;
    this.qmp = undefined;
    this.pid = undefined;
    this.daemonDir = undefined;
    qmp?.close();
    try {
      await daemon?.stop();
    } finally {
      // Whatever the stop said (a daemon that would not die is reported by it), what it left under
      // its directory goes.
      if (dir) {
        await unmountFuseUnder({ fs: this.ctx.fs, runner: this.ctx.runner }, dir, this.ctx.commandTimeoutMs);
        await rm(dir, { recursive: true, force: true });
      }
    }
  }
}
