import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { BerthError, parseWith } from '@berth/core';
import { createCommandRunner, createDeviceWaiter, createHostFs, type CommandRunner, type DeviceWaiter, type HostFs } from '@berth/host';
import type { LoginAuth, LoginRequest, LoginResult, TargetAccess, TargetSession } from '../target-access.js';
import { DEFAULT_LIBISCSI_TIMEOUT_MS, LibiscsiClient } from './libiscsi-client.js';
import { parseIscsiLs } from './libiscsi-output.js';
import { classifyLoginFailure } from './login-failure.js';
import { RealTargetSession } from './real-target-session.js';
import { zIscsiName, zLoginAuth, zLoginRequest, zPortal } from './schemas.js';

/** Every directory RealTargetAccess makes starts with this, so `sweepStrays` finds only its own things. */
export const REAL_DIR_PREFIX = 'berth-real-';

/** tgtd sends this target portal group tag on every portal (KERNEL-MODEL §6). */
const TGTD_TPGT = 1;
/** How often a logout that left a disk held open is tried again, in ms. */
const LINGER_RETRY_MS = 2_000;

/** Options of `RealTargetAccess`. */
export interface RealTargetAccessOptions {
  /**
   * Where the access makes its private directory (`<workDir>/berth-real-XXXXXX/`) holding each
   * daemon's QMP socket, log and FUSE mount points (default: the OS temp directory). Pass the same
   * directory to `sweepStrays` as a safety net.
   */
  workDir?: string;
  /** Runs libiscsi's tools, losetup and umount (default: a plain `createCommandRunner()`). */
  runner?: CommandRunner;
  /** Deadline of a login check or discovery, in ms (default 15 000; a refused connection answers in ms). */
  loginTimeoutMs?: number;
  /** Deadline of losetup/umount commands, in ms (default 15 000). */
  commandTimeoutMs?: number;
  /** Deadline of qemu-storage-daemon start-up, stop and each QMP command, in ms (default 10 000). */
  daemonTimeoutMs?: number;
  /** The qemu-storage-daemon executable (default: `qemu-storage-daemon` on PATH). */
  qsdBinary?: string;
  /** The tid of a target, needed only when its LUNs' scsi_id and scsi_sn were both changed. */
  tidOf?: (iqn: string) => number | undefined;
}

/** The outcome of `discover`. */
export type DiscoverResult = Awaited<ReturnType<TargetAccess['discover']>>;

/**
 * The real-backed `TargetAccess`: a login is checked against the real target with libiscsi (wrong
 * CHAP, an ACL that does not name the initiator or a missing target fail as they would for
 * iscsiadm), and a LUN's disk is a real `/dev/loopN` over a qemu-storage-daemon FUSE export of the
 * LUN, so bytes written to the simulated `/dev/sdX` land in the target's LUN file.
 */
export class RealTargetAccess implements TargetAccess {
  private readonly runner: CommandRunner;
  private readonly waiter: DeviceWaiter;
  private readonly fs: HostFs;
  private readonly libiscsi: LibiscsiClient;
  private readonly sessions = new Set<RealTargetSession>();
  /** Sessions whose logout left disks held open: their logout is tried again every `LINGER_RETRY_MS`. */
  private readonly lingering = new Set<RealTargetSession>();
  private retryTimer: NodeJS.Timeout | undefined;
  private retrying: Promise<void> | undefined;
  private dir: Promise<string> | undefined;
  private nextDaemonDir = 1;
  private closed = false;

  constructor(private readonly options: RealTargetAccessOptions = {}) {
    this.runner = options.runner ?? createCommandRunner();
    // The daemons, FUSE files and loop devices are the real machine's, whatever the simulated root.
    this.fs = createHostFs('/');
    this.waiter = createDeviceWaiter(this.fs);
    this.libiscsi = new LibiscsiClient(this.runner, options.loginTimeoutMs ?? DEFAULT_LIBISCSI_TIMEOUT_MS);
  }

  /** The sessions logged in and not yet logged out. */
  get openSessions(): readonly RealTargetSession[] {
    return [...this.sessions];
  }

  /**
   * Log in for real: `iscsi-inq` of LUN 0 with the request's initiator name and CHAP. A SCSI error
   * after the login (no LUN 0) still counts as logged in. Throws only for invalid input or an abort.
   */
  async login(request: LoginRequest): Promise<{ result: LoginResult; session?: TargetSession }> {
    this.assertOpen();
    const valid = parseWith(zLoginRequest, { portal: request.portal, iqn: request.iqn, initiator: request.initiator, auth: request.auth }, 'login request');
    const endpoint = { portal: valid.portal, initiator: valid.initiator, ...(valid.auth ? { auth: valid.auth } : {}) };
    // LUN 0 is tgtd's controller, always there.
    const outcome = await this.libiscsi.inquiry(endpoint, valid.iqn, 0, undefined, {
      ...(request.signal ? { signal: request.signal } : {}),
    });
    if (outcome.aborted) throw new BerthError('CANCELLED', `login to ${valid.iqn} at ${valid.portal} was cancelled`, { cause: request.signal?.reason });
    const failure = classifyLoginFailure(outcome);
    if (failure) return { result: { ok: false, exitCode: failure.exitCode, message: failure.message } };
    const session = new RealTargetSession(this.context(), valid);
    this.sessions.add(session);
    return { result: { ok: true, tpgt: TGTD_TPGT }, session };
  }

  /**
   * SendTargets discovery with libiscsi (`iscsi-ls`): the targets whose ACL admits `initiator`.
   * Failures use iscsiadm's discovery codes: 24 for CHAP, 11 when the portal cannot be reached
   * (iscsiadm gives up with a PDU timeout after its reconnects, KERNEL-MODEL §1).
   */
  async discover(portal: string, initiator: string, auth?: LoginAuth): Promise<DiscoverResult> {
    this.assertOpen();
    const validPortal = parseWith(zPortal, portal, 'portal');
    const validInitiator = parseWith(zIscsiName, initiator, 'initiator name');
    const validAuth = auth === undefined ? undefined : parseWith(zLoginAuth, auth, 'discovery CHAP settings');
    const result = await this.libiscsi.ls({ portal: validPortal, initiator: validInitiator, ...(validAuth ? { auth: validAuth } : {}) }, false);
    const failure = classifyLoginFailure(result);
    if (failure) return { ok: false, exitCode: failure.exitCode === 8 ? 11 : failure.exitCode, message: failure.message };
    if (result.exitCode !== 0) return { ok: false, exitCode: 4, message: `discovery at ${validPortal} failed (exit ${result.exitCode})` };
    return { ok: true, targets: parseIscsiLs(result.stdout).map((t) => ({ portal: t.portal, tpgt: t.tpgt, iqn: t.iqn })) };
  }

  /**
   * Log every session out (closing its disks and daemon) and remove the private directory.
   * Idempotent. A disk still held open (its loop device) is tried once more, then left to the
   * kernel (`abandonHeld`: detached at its last close) and reported in the error.
   */
  async close(): Promise<void> {
    this.closed = true;
    this.stopRetries();
    const errors: unknown[] = [];
    for (const session of [...this.sessions]) await session.logout().catch((e: unknown) => errors.push(e));
    const abandoned: string[] = [];
    for (const session of [...this.sessions]) if (session.heldLoopDevices.length > 0) abandoned.push(...(await session.abandonHeld()));
    if (abandoned.length > 0) {
      errors.unshift(
        new BerthError('CONFLICT', `${abandoned.join(', ')} still held open at close: detached the kernel's way (autoclear), freed at the holder's last close`, {
          details: { devices: abandoned, reason: 'held-open' },
        }),
      );
    }
    const dir = await this.dir?.catch(() => undefined);
    if (dir) await rm(dir, { recursive: true, force: true }).catch((e: unknown) => errors.push(e));
    this.dir = undefined;
    if (errors.length > 0) throw errors[0];
  }

  private assertOpen(): void {
    if (this.closed) throw new BerthError('INVALID_STATE', 'this RealTargetAccess is closed');
  }

  private privateDir(): Promise<string> {
    this.dir ??= (async () => {
      const parent = path.resolve(this.options.workDir ?? tmpdir());
      await mkdir(parent, { recursive: true });
      return mkdtemp(path.join(parent, REAL_DIR_PREFIX));
    })();
    return this.dir;
  }

  private context(): ConstructorParameters<typeof RealTargetSession>[0] {
    return {
      runner: this.runner,
      waiter: this.waiter,
      fs: this.fs,
      libiscsi: this.libiscsi,
      commandTimeoutMs: this.options.commandTimeoutMs ?? DEFAULT_LIBISCSI_TIMEOUT_MS,
      daemonTimeoutMs: this.options.daemonTimeoutMs ?? 10_000,
      ...(this.options.qsdBinary ? { qsdBinary: this.options.qsdBinary } : {}),
      ...(this.options.tidOf ? { tidOf: this.options.tidOf } : {}),
      makeDaemonDir: async () => {
        const dir = path.join(await this.privateDir(), `qsd-${this.nextDaemonDir++}`);
        await mkdir(dir, { mode: 0o700 });
        return dir;
      },
      forget: (session) => {
        this.sessions.delete(session);
        this.lingering.delete(session);
        if (this.lingering.size === 0) this.stopRetries();
      },
      linger: (session) => {
        this.lingering.add(session);
        this.retryTimer ??= setInterval(() => this.retryLingering(), LINGER_RETRY_MS).unref();
      },
    };
  }

  /** Loop devices of disks a logout could not close (held open), kept until they are released. */
  get heldLoopDevices(): string[] {
    return [...this.lingering].flatMap((session) => session.heldLoopDevices);
  }

  /** Try the lingering sessions' logouts again (one try at a time). */
  private retryLingering(): void {
    if (this.retrying) return;
    this.retrying = (async () => {
      for (const session of [...this.lingering]) await session.logout().catch(() => undefined);
    })().finally(() => {
      this.retrying = undefined;
    });
  }

  private stopRetries(): void {
    if (this.retryTimer !== undefined) clearInterval(this.retryTimer);
    this.retryTimer = undefined;
  }
}
