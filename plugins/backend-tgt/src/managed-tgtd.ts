import { appendFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BerthError, type Logger } from '@berth/core';
import {
  createCommandRunner,
  DaemonError,
  daemonStatus,
  startDaemon,
  stopDaemon,
  type CommandRunner,
  type StopDaemonResult,
} from '@berth/host';
import { TgtStateStore } from './state-store.js';
import { Tgtadm } from './tgtadm.js';

/** The directory under the data dir where the backend keeps its files. */
export const BACKEND_DIR = 'backend-tgt';

/**
 * Paths of berth's own tgtd under `<dataDir>/backend-tgt/`. `stoppedFile` marks a tgtd stopped on
 * purpose (`berth backend stop tgt`): `berth serve`'s upkeep leaves it stopped, the next tgt
 * operation starts it (and removes the mark).
 */
export function managedTgtdPaths(dataDir: string): { dir: string; pidFile: string; logFile: string; stoppedFile: string } {
  const dir = path.join(dataDir, BACKEND_DIR);
  return { dir, pidFile: path.join(dir, 'tgtd.pid'), logFile: path.join(dir, 'tgtd.log'), stoppedFile: path.join(dir, 'tgtd.stopped') };
}

/** Options of a `ManagedTgtd`. */
export interface ManagedTgtdOptions {
  dataDir: string;
  tgtadm: Tgtadm;
  /** Portals as `address:port`; tgtd is started on the first, the others are added after. */
  portals: readonly string[];
  startTimeoutMs: number;
  logger: Logger;
}

// tgtd binds 0.0.0.0:3260 and [::]:3260 by itself when its --iscsi portal cannot be bound; those
// are recognised so the fallback is reported instead of silently exposing every interface.
const WILDCARD_PORTALS = new Set(['0.0.0.0:3260', '[::]:3260']);

const FIRST_PROBE_MS = 2;
const MAX_PROBE_MS = 50;

/**
 * berth's own tgtd: `tgtd -f -C <controlPort> --iscsi portal=<first portal>`, detached, pid in
 * `tgtd.pid`, output in `tgtd.log`. `ensureRunning` is cheap when it runs (a pid-file check) and
 * starts it when it does not; the caller then re-creates the targets (tgtd keeps nothing on disk).
 * Callers serialise calls (the state lock) so two processes never start two tgtds.
 */
export class ManagedTgtd {
  readonly pidFile: string;
  readonly logFile: string;
  // tgtadm answered and the portals were checked for the tgtd with this pid.
  private verifiedPid: number | undefined;

  constructor(private readonly options: ManagedTgtdOptions) {
    const paths = managedTgtdPaths(options.dataDir);
    this.pidFile = paths.pidFile;
    this.logFile = paths.logFile;
  }

  /** Make sure berth's tgtd runs and listens on every portal; `started` means its targets are gone. */
  async ensureRunning(signal?: AbortSignal): Promise<'running' | 'started'> {
    const status = await daemonStatus(this.pidFile);
    if (status.running && status.pid !== undefined) {
      if (status.pid === this.verifiedPid) return 'running';
      // Running but not seen by this process yet: it may still be starting, or be wedged.
      if (await this.waitUntilAnswering(status.pid, signal)) {
        await this.ensurePortals(signal);
        this.verifiedPid = status.pid;
        return 'running';
      }
      this.options.logger.warn({ pid: status.pid, controlPort: this.options.tgtadm.controlPort }, 'tgtd does not answer; restarting it');
      await stopDaemon(this.pidFile, { timeoutMs: 0, signal: 'SIGKILL' });
    } else if (status.pid !== undefined) {
      this.options.logger.warn({ pid: status.pid, logFile: this.logFile }, 'berth\'s tgtd is not running (crash or reboot); starting it and restoring the targets');
    }
    this.verifiedPid = undefined;
    if (await this.options.tgtadm.answers(signal)) {
      throw new BerthError('CONFLICT', `a tgtd that berth did not start answers on control port ${this.options.tgtadm.controlPort}`, {
        hint: 'set the tgt backend\'s controlPort to a number no other tgtd uses, stop that tgtd, or set manageDaemon: false to drive it',
        details: { controlPort: this.options.tgtadm.controlPort },
      });
    }
    const pid = await this.start(signal);
    this.verifiedPid = pid;
    return 'started';
  }

  /**
   * Whether the tgtd this process verified still runs (a pid-file and /proc check, no tgtadm):
   * false when it died, was never verified here, or nothing is recorded.
   */
  async runsAsVerified(): Promise<boolean> {
    if (this.verifiedPid === undefined) return false;
    const status = await daemonStatus(this.pidFile);
    return status.running && status.pid === this.verifiedPid;
  }

  /** Forget what was verified (the next `ensureRunning` asks tgtd again). */
  forget(): void {
    this.verifiedPid = undefined;
  }

  private async start(signal?: AbortSignal): Promise<number> {
    const [first, ...others] = this.options.portals;
    if (first === undefined) throw new BerthError('CONFIG', 'the tgt backend has no portal');
    const controlPort = this.options.tgtadm.controlPort;
    const args = ['-f', '-C', String(controlPort), '--iscsi', `portal=${first}`];
    // A tgt operation starts it whatever stopped it: the operator's stop holds until then.
    await rm(managedTgtdPaths(this.options.dataDir).stoppedFile, { force: true });
    await appendFile(this.logFile, `--- berth: starting tgtd ${args.join(' ')} at ${new Date().toISOString()}\n`, { mode: 0o600 });
    let pid: number;
    try {
      ({ pid } = await startDaemon({ file: 'tgtd', args, logFile: this.logFile, pidFile: this.pidFile }));
    } catch (error) {
      if (error instanceof DaemonError && error.reason === 'not-found') {
        throw new BerthError('HOST_UNSUPPORTED', 'tgt is not installed: tgtd was not found', {
          hint: 'install it with `apt-get install -y tgt` (Debian/Ubuntu)',
          cause: error,
        });
      }
      throw new BerthError('BACKEND_ERROR', `cannot start tgtd: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
    const started = Date.now();
    if (!(await this.waitUntilAnswering(pid, signal))) {
      const alive = (await daemonStatus(this.pidFile)).running;
      await stopDaemon(this.pidFile, { timeoutMs: 0, signal: 'SIGKILL' }).catch(() => undefined);
      const tail = await this.logTail();
      throw new BerthError(
        'BACKEND_ERROR',
        alive
          ? `tgtd (pid ${pid}) did not answer on control port ${controlPort} within ${this.options.startTimeoutMs} ms`
          : `tgtd exited right after its start: ${tail || 'no output'}`,
        {
          hint: /another tgtd is using/.test(tail)
            ? `another tgtd already uses control port ${controlPort}: set the tgt backend's controlPort to another number`
            : `see ${this.logFile}`,
          details: { controlPort, logFile: this.logFile },
        },
      );
    }
    try {
      await this.ensurePortals(signal);
    } catch (error) {
      await stopDaemon(this.pidFile, { timeoutMs: 0, signal: 'SIGKILL' }).catch(() => undefined);
      throw error;
    }
    this.options.logger.info(
      { pid, controlPort, portals: [first, ...others], startMs: Date.now() - started, logFile: this.logFile },
      'tgtd started',
    );
    return pid;
  }

  /** Wait, on short polls with a deadline, until tgtadm answers; false when tgtd died or the deadline passed. */
  private async waitUntilAnswering(pid: number, signal?: AbortSignal): Promise<boolean> {
    const deadline = Date.now() + this.options.startTimeoutMs;
    let pause = FIRST_PROBE_MS;
    for (;;) {
      if (await this.options.tgtadm.answers(signal)) return true;
      const status = await daemonStatus(this.pidFile);
      if (!status.running || status.pid !== pid) return false;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await sleep(Math.min(pause, left), signal);
      pause = Math.min(pause * 2, MAX_PROBE_MS);
    }
  }

  /** Add the portals tgtd lacks, and fail when one cannot be bound or tgtd fell back to the wildcard. */
  private async ensurePortals(signal?: AbortSignal): Promise<void> {
    const tgtadm = this.options.tgtadm;
    let listening = await tgtadm.showPortals(signal);
    const wildcard = listening.filter((p) => WILDCARD_PORTALS.has(p) && !this.options.portals.includes(p));
    if (wildcard.length > 0) {
      throw new BerthError(
        'BACKEND_ERROR',
        `tgtd could not listen on ${this.options.portals[0]} and fell back to ${wildcard.join(' and ')}; it was stopped`,
        {
          hint: `another process probably holds ${this.options.portals[0]} (see ${this.logFile}); free it or change the tgt backend's portals`,
          details: { portals: this.options.portals, listening },
        },
      );
    }
    for (const portal of this.options.portals) {
      if (listening.includes(portal)) continue;
      try {
        await tgtadm.newPortal(portal, signal ? { signal } : {});
      } catch (error) {
        throw new BerthError('BACKEND_ERROR', `tgtd cannot listen on portal ${portal}`, {
          hint: `is the address configured on this host and the port free? the reason is in ${this.logFile}`,
          details: { portal },
          cause: error,
        });
      }
    }
    listening = await tgtadm.showPortals(signal);
    const missing = this.options.portals.filter((p) => !listening.includes(p));
    if (missing.length > 0) {
      throw new BerthError('BACKEND_ERROR', `tgtd does not listen on ${missing.join(', ')}`, {
        hint: `the reason is in ${this.logFile}`,
        details: { missing, listening },
      });
    }
  }

  private async logTail(): Promise<string> {
    const text = await readFile(this.logFile, 'utf8').catch(() => '');
    return text
      .split('\n')
      .filter((line) => line.trim() !== '' && !line.startsWith('--- berth:'))
      .slice(-3)
      .join(' | ');
  }
}

/** Options of `stopManagedTgtd`. */
export interface StopManagedTgtdOptions {
  /** Runs tgtadm (default: a plain runner on this host). */
  runner?: CommandRunner;
  /** How long tgtd may take to leave after it was asked, before SIGKILL (default 5 s). */
  timeoutMs?: number;
}

/**
 * Stop berth's tgtd for `dataDir` (tests, a future `berth backend stop`). tgtd 1.0.85 ignores
 * SIGTERM and SIGINT, so it is asked through tgtadm (`--op delete --mode system`, which it grants
 * only when it holds no target) and SIGKILLed otherwise; its LUN files are plain files written with
 * pwrite, so nothing is lost that was acknowledged. The targets come back on the next use.
 */
export async function stopManagedTgtd(dataDir: string, controlPort: number, options: StopManagedTgtdOptions = {}): Promise<StopDaemonResult> {
  const { dir, pidFile, stoppedFile } = managedTgtdPaths(dataDir);
  // Marked first: an upkeep round of a running `berth serve` must not start it again behind the operator.
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(stoppedFile, `stopped by berth backend stop at ${new Date().toISOString()}\n`, { mode: 0o600 });
  // Under the backend's state lock: an upkeep restore already under way (it holds the lock while it
  // starts tgtd) ends first, and the tgtd it started is the one stopped here.
  return new TgtStateStore(dir).transaction(undefined, async () => {
    // Again under the lock: a restore that was starting tgtd when the first one was written removed
    // it as it started (a review: the next upkeep round then started tgtd again behind the stop).
    await writeFile(stoppedFile, `stopped by berth backend stop at ${new Date().toISOString()}\n`, { mode: 0o600 });
    return stopMarkedTgtd(pidFile, controlPort, options);
  });
}

async function stopMarkedTgtd(pidFile: string, controlPort: number, options: StopManagedTgtdOptions): Promise<StopDaemonResult> {
  const status = await daemonStatus(pidFile);
  if (!status.running) {
    await rm(pidFile, { force: true });
    return { wasRunning: false, ...(status.pid === undefined ? {} : { pid: status.pid }), killed: false };
  }
  const tgtadm = new Tgtadm({ runner: options.runner ?? createCommandRunner(), controlPort, logHint: '', noDaemonHint: '' });
  const asked = await tgtadm.deleteSystem().catch(() => false);
  const stopped = await stopDaemon(pidFile, { timeoutMs: asked ? (options.timeoutMs ?? 5_000) : 0, signal: asked ? null : 'SIGKILL' });
  // tgtd granted the delete and left at once, before stopDaemon looked: it was running all the same
  // (said "was not running" before).
  const pid = stopped.pid ?? status.pid;
  const result: StopDaemonResult = asked ? { ...stopped, wasRunning: true, ...(pid === undefined ? {} : { pid }) } : stopped;
  // tgtd leaves its control socket behind when it is killed; it is ours to remove.
  await rm(`/run/tgtd/socket.${controlPort}`, { force: true });
  await rm(`/run/tgtd/socket.${controlPort}.lock`, { force: true });
  return result;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
