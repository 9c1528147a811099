import { BerthError } from '@berth/core';
import { redact, type CommandResult, type CommandRunner } from '@berth/host';
import {
  parseAccountList,
  parsePortalList,
  parseSystemState,
  parseTargetList,
  type TgtTarget,
} from './tgtadm-show-parser.js';

/** tgtadm's exit code when tgtd does not answer on the control port. */
export const TGTADM_NO_DAEMON = 107;

// Every tgtadm call is a few ms; a stuck tgtd must not hold an operation for long.
const TGTADM_TIMEOUT_MS = 15_000;
const PROBE_TIMEOUT_MS = 3_000;

/** Options of a `Tgtadm` client. */
export interface TgtadmOptions {
  runner: CommandRunner;
  /** tgtd's control port (`-C N`). */
  controlPort: number;
  /** Where a reader finds the reason behind tgtadm's terse errors (tgtd's log). */
  logHint: string;
  /** What to do when tgtd is not running (differs for a managed and a system tgtd). */
  noDaemonHint: string;
  /** iSCSI parameters (`name` → `value`) every new target offers its sessions (`newTarget` sets them). */
  targetParams?: Readonly<Record<string, string>>;
}

/** Options of one tgtadm call. */
export interface TgtadmCallOptions {
  signal?: AbortSignal;
  /** Values (CHAP passwords) masked in logs and errors. */
  secrets?: readonly string[];
  /** tgtadm messages that mean "already so" for this call: the call then succeeds. */
  alreadyDone?: readonly RegExp[];
}

/** tgtadm's messages that say a target, account or LUN is not there. */
export const NO_TARGET = /can't find the target/;
export const NO_ACCOUNT = /can't find the account/;
export const NO_LUN = /can't find the logical unit/;

/**
 * A typed tgtadm client for one tgtd (one control port). It runs `tgtadm -C N --lld iscsi ...`
 * through the host's runner and turns failures into BerthErrors that say what was being done.
 */
export class Tgtadm {
  constructor(private readonly options: TgtadmOptions) {}

  /** tgtd's control port. */
  get controlPort(): number {
    return this.options.controlPort;
  }

  /** Whether tgtd answers on the control port (false when nothing listens: rc 107). */
  async answers(signal?: AbortSignal): Promise<boolean> {
    const result = await this.raw(['--op', 'show', '--mode', 'sys'], { timeoutMs: PROBE_TIMEOUT_MS, ...(signal ? { signal } : {}) });
    if (result.notFound) throw notInstalled();
    return result.exitCode === 0 && parseSystemState(result.stdout) !== undefined;
  }

  /** Every target with its LUNs, sessions, accounts and ACLs. */
  async showTargets(signal?: AbortSignal): Promise<TgtTarget[]> {
    const result = await this.call('list the targets', ['--op', 'show', '--mode', 'target'], signal ? { signal } : {});
    try {
      return parseTargetList(result.stdout);
    } catch (error) {
      throw new BerthError('BACKEND_ERROR', `cannot read tgtadm's target list: ${(error as Error).message}`, { cause: error });
    }
  }

  /** Every CHAP account tgtd holds (names only: tgtd never prints secrets). */
  async showAccounts(signal?: AbortSignal): Promise<string[]> {
    const result = await this.call('list the CHAP accounts', ['--op', 'show', '--mode', 'account'], signal ? { signal } : {});
    return parseAccountList(result.stdout);
  }

  /** The portals tgtd listens on, as `address:port`. */
  async showPortals(signal?: AbortSignal): Promise<string[]> {
    const result = await this.call('list the portals', ['--op', 'show', '--mode', 'portal'], signal ? { signal } : {});
    return parsePortalList(result.stdout);
  }

  /** Make tgtd listen on one more portal. */
  async newPortal(portal: string, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(`add portal ${portal}`, ['--op', 'new', '--mode', 'portal', '--param', `portal=${portal}`], options);
  }

  /** Stop listening on a portal. */
  async deletePortal(portal: string, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(`remove portal ${portal}`, ['--op', 'delete', '--mode', 'portal', '--param', `portal=${portal}`], options);
  }

  /** Create target `tid` named `iqn`, with the client's `targetParams`. */
  async newTarget(tid: number, iqn: string, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(`create target ${iqn} (tid ${tid})`, ['--op', 'new', '--mode', 'target', '--tid', String(tid), '--targetname', iqn], options);
    // tgtd takes one parameter per request; they apply to sessions that log in afterwards.
    for (const [name, value] of Object.entries(this.options.targetParams ?? {})) await this.updateTarget(tid, name, value, options);
  }

  /** Set one iSCSI parameter of target `tid` (`MaxBurstLength`, `InitialR2T`, ...). */
  async updateTarget(tid: number, name: string, value: string, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(`set ${name}=${value} on tid ${tid}`, ['--op', 'update', '--mode', 'target', '--tid', String(tid), '--name', name, '--value', value], options);
  }

  /** Delete target `tid`; without `force` tgtd refuses while a session is logged in. */
  async deleteTarget(tid: number, force: boolean, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(`delete target tid ${tid}`, ['--op', 'delete', '--mode', 'target', '--tid', String(tid), ...(force ? ['--force'] : [])], {
      alreadyDone: [NO_TARGET],
      ...options,
    });
  }

  /** Add LUN `lun` backed by `file` (read-write file backing store). */
  async newLun(tid: number, lun: number, file: string, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(
      `add LUN ${lun} backed by ${file} to tid ${tid}`,
      ['--op', 'new', '--mode', 'logicalunit', '--tid', String(tid), '--lun', String(lun), '--backing-store', file, '--bstype', 'rdwr'],
      options,
    );
  }

  /** Remove LUN `lun` (tgtd allows it even under a live session). */
  async deleteLun(tid: number, lun: number, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(`remove LUN ${lun} of tid ${tid}`, ['--op', 'delete', '--mode', 'logicalunit', '--tid', String(tid), '--lun', String(lun)], {
      alreadyDone: [NO_LUN],
      ...options,
    });
  }

  /** Change a LUN's parameters (`online=0`, `path=...`, `scsi_id=...`). */
  async updateLun(tid: number, lun: number, params: string, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(
      `update LUN ${lun} of tid ${tid} (${params})`,
      ['--op', 'update', '--mode', 'logicalunit', '--tid', String(tid), '--lun', String(lun), '--params', params],
      options,
    );
  }

  /** Create a CHAP account. */
  async newAccount(user: string, password: string, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(`create CHAP account ${user}`, ['--op', 'new', '--mode', 'account', '--user', user, '--password', password], {
      ...options,
      secrets: [...(options.secrets ?? []), password],
    });
  }

  /** Delete a CHAP account (gone already is success). */
  async deleteAccount(user: string, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(`delete CHAP account ${user}`, ['--op', 'delete', '--mode', 'account', '--user', user], { alreadyDone: [NO_ACCOUNT], ...options });
  }

  /** Bind an account to a target: incoming (the initiator's) or outgoing (the target's, mutual CHAP). */
  async bindAccount(tid: number, user: string, outgoing: boolean, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(
      `bind ${outgoing ? 'outgoing ' : ''}CHAP account ${user} to tid ${tid}`,
      ['--op', 'bind', '--mode', 'account', '--tid', String(tid), '--user', user, ...(outgoing ? ['--outgoing'] : [])],
      options,
    );
  }

  /** Unbind an account from a target (not bound is success). */
  async unbindAccount(tid: number, user: string, outgoing: boolean, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(
      `unbind ${outgoing ? 'outgoing ' : ''}CHAP account ${user} from tid ${tid}`,
      ['--op', 'unbind', '--mode', 'account', '--tid', String(tid), '--user', user, ...(outgoing ? ['--outgoing'] : [])],
      { alreadyDone: [NO_ACCOUNT, NO_TARGET], ...options },
    );
  }

  /** Allow an initiator (by IQN) to log in to a target. */
  async bindInitiator(tid: number, initiator: string, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(`allow initiator ${initiator} on tid ${tid}`, ['--op', 'bind', '--mode', 'target', '--tid', String(tid), '--initiator-name', initiator], {
      alreadyDone: [/this access control rule already exists/],
      ...options,
    });
  }

  /** Remove an initiator's ACL entry (a live session stays: tgtd does not drop it). */
  async unbindInitiator(tid: number, initiator: string, options: TgtadmCallOptions = {}): Promise<void> {
    await this.call(
      `remove initiator ${initiator} from tid ${tid}`,
      ['--op', 'unbind', '--mode', 'target', '--tid', String(tid), '--initiator-name', initiator],
      { alreadyDone: [/this access control rule does not exist/, NO_TARGET], ...options },
    );
  }

  /** Ask tgtd to exit; it only agrees when it holds no target (rc 0), so this answers whether it did. */
  async deleteSystem(signal?: AbortSignal): Promise<boolean> {
    const result = await this.raw(['--op', 'delete', '--mode', 'system'], signal ? { signal } : {});
    if (result.notFound) throw notInstalled();
    return result.exitCode === 0;
  }

  /** Run one tgtadm command, throwing a BerthError that says what failed. */
  async call(what: string, args: readonly string[], options: TgtadmCallOptions = {}): Promise<CommandResult> {
    const secrets = options.secrets ?? [];
    const result = await this.raw(args, { secrets, ...(options.signal ? { signal: options.signal } : {}) });
    if (result.exitCode === 0) return result;
    const message = tgtadmMessage(result, secrets);
    if (options.alreadyDone?.some((pattern) => pattern.test(message))) return result;
    throw this.toError(what, result, message);
  }

  private async raw(
    args: readonly string[],
    options: { signal?: AbortSignal; secrets?: readonly string[]; timeoutMs?: number },
  ): Promise<CommandResult> {
    return this.options.runner.run('tgtadm', ['-C', String(this.options.controlPort), '--lld', 'iscsi', ...args], {
      reject: false,
      timeoutMs: options.timeoutMs ?? TGTADM_TIMEOUT_MS,
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.secrets && options.secrets.length > 0 ? { secrets: options.secrets } : {}),
    });
  }

  private toError(what: string, result: CommandResult, message: string): BerthError {
    const details = { exitCode: result.exitCode, controlPort: this.options.controlPort, tgtadm: message };
    if (result.notFound) return notInstalled();
    if (result.aborted) return new BerthError('CANCELLED', `${what}: cancelled`, { details });
    if (result.timedOut) {
      return new BerthError('TIMEOUT', `${what}: tgtadm did not answer within ${TGTADM_TIMEOUT_MS} ms`, {
        hint: `tgtd on control port ${this.options.controlPort} is stuck; ${this.options.logHint}`,
        details,
      });
    }
    if (result.exitCode === TGTADM_NO_DAEMON) {
      return new BerthError('BACKEND_ERROR', `${what}: tgtd is not running on control port ${this.options.controlPort}`, {
        hint: this.options.noDaemonHint,
        details,
      });
    }
    const conflict = /already exists|still active|already has an outgoing account/.test(message);
    return new BerthError(conflict ? 'CONFLICT' : 'BACKEND_ERROR', `${what}: tgtadm failed (exit ${result.exitCode}): ${message}`, {
      // rc 22 "invalid request" is all tgtadm says for a missing file or a portal it cannot bind.
      hint: `tgtadm gives terse reasons; ${this.options.logHint}`,
      details,
    });
  }
}

/** tgtadm's own message without its `tgtadm: ` prefix, secrets masked. */
function tgtadmMessage(result: CommandResult, secrets: readonly string[]): string {
  const text = (result.stderr.trim() || result.stdout.trim()).replace(/^tgtadm: /gm, '');
  return redact(text.split('\n').slice(-3).join(' | '), secrets) || `exit ${result.exitCode}`;
}

/** tgtadm (package `tgt`) is not installed. */
export function notInstalled(): BerthError {
  return new BerthError('HOST_UNSUPPORTED', 'tgt is not installed: tgtadm was not found', {
    hint: 'install it with `apt-get install -y tgt` (Debian/Ubuntu; the package holds tgtd and tgtadm)',
  });
}
