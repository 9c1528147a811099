import { createHash } from 'node:crypto';
import { BerthError } from '@berth/core';
import { acquireFileLock, LockTimeoutError, type HostFs, type ReleaseLock } from '@berth/host';
import { targetKey } from './lun-connection.js';
import type { LunTarget } from './lun-device.js';

/**
 * Where every berth process on the host keeps its iSCSI target files (a tmpfs on a real host:
 * nothing there outlives a reboot, and neither does a session). Resolved through the host's fs, so
 * a simulated host has its own.
 */
export const TARGET_FILES_DIR = '/run/lock/berth/iscsi';

/** The name a target's files start with: a short hash of its key (an IQN is long and holds ':'). */
export function targetFileStem(target: { iqn: string; portal: LunTarget['portal'] }): string {
  return createHash('sha256').update(targetKey(target)).digest('hex').slice(0, 32);
}

/**
 * The host-wide side of a target's lock: a lock file per target (IQN + portal) that every berth
 * process on the host takes around its session setup and logout decision, so that two processes
 * (`berth serve` and a CLI `berth attach`, two CLI runs) never log in and out of one target at
 * once. A lock whose process died is broken by the next taker (`acquireFileLock`).
 */
export class TargetFiles {
  constructor(
    private readonly fs: HostFs,
    /** How long to wait for another process's hold, in ms. */
    private readonly timeoutMs: number,
  ) {}

  /**
   * Take `target`'s lock file, waiting while another process holds it; a TIMEOUT BerthError
   * naming the target and the holder past `timeoutMs`, the signal's reason when it fires.
   */
  async lock(target: LunTarget, signal: AbortSignal | undefined): Promise<ReleaseLock> {
    await this.fs.mkdir(TARGET_FILES_DIR, { mode: 0o700 });
    const lockPath = this.fs.resolve(`${TARGET_FILES_DIR}/${targetFileStem(target)}.lock`);
    const what = `iSCSI target ${target.iqn} at ${target.portalText}`;
    return acquireFileLock(lockPath, { timeoutMs: this.timeoutMs, what, ...(signal === undefined ? {} : { signal }) }).catch((error: unknown) => {
      if (!(error instanceof LockTimeoutError)) throw error;
      const holder = error.holderPid === undefined ? 'a process still writing the lock' : `pid ${error.holderPid}`;
      throw new BerthError('TIMEOUT', `${what} stayed locked by another berth process on this host (${holder}) for more than ${error.timeoutMs} ms`, {
        hint: 'another berth process on this host is working on that target (a login or a logout); let it finish and try again, or raise the transport\'s targetLockTimeoutMs. A lock whose process is gone is broken by the next taker.',
        details: { iqn: target.iqn, portal: target.portalText, lockPath: error.lockPath, ...(error.holderPid === undefined ? {} : { holderPid: error.holderPid }) },
        cause: error,
      });
    });
  }
}
