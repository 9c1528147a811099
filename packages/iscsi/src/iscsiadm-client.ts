import { BerthError, lazySchema, parseWith } from '@berth/core';
import type { CommandResult, CommandRunner } from '@berth/host';
import { z } from '@berth/core/zod';
import { classifyResult, type ExitClass, type IscsiadmOp } from './exit-codes.js';
import { commandResultOf, toIscsiadmError, type IscsiadmError } from './iscsiadm-error.js';
import { formatPortal, type Portal } from './portal.js';
import { parsePortalTargets, type PortalTarget } from './portal-list-parser.js';
import { parseRecords, type IscsiRecord } from './record-parser.js';
import { parseSessionList, type SessionListEntry } from './session-list-parser.js';
import {
  toPortal,
  toTarget,
  zIfaceName,
  zRecordKey,
  zRecordValue,
  type IscsiTarget,
  type IscsiTargetInput,
} from './target.js';
import { isRetryableIscsiadmError, withRetry, zRetryPolicy, type RetryEvent, type RetryPolicy } from './with-retry.js';

/** The per-command timeout when none is given: 30 s (csi-lib-iscsi's 3 s fails under load). */
export const DEFAULT_ISCSIADM_TIMEOUT_MS = 30_000;

/** The retry policy when none is given: 3 tries, 250 ms then 500 ms (± jitter), at most 4 s. */
export const DEFAULT_ISCSIADM_RETRY: RetryPolicy = { attempts: 3, baseDelayMs: 250, maxDelayMs: 4_000 };

/** Options of `IscsiadmClient`. */
export interface IscsiadmClientOptions {
  /** Runs iscsiadm; the only way this package starts a process. */
  runner: CommandRunner;
  /** Timeout of each iscsiadm run in ms (default 30 000). */
  timeoutMs?: number;
  /** How retryable exit codes are retried (default `DEFAULT_ISCSIADM_RETRY`; `attempts: 1` turns it off). */
  retry?: RetryPolicy;
  /** The executable, looked up on PATH (default `iscsiadm`). */
  command?: string;
  /** Called before each retry (for logs and metrics). */
  onRetry?: (event: RetryEvent & { op: IscsiadmOp }) => void;
}

/** Options every call takes. */
export interface CallOptions {
  /** Stop the command and any retry when this fires (the operation's deadline). */
  signal?: AbortSignal;
  /** This call's timeout per run, in ms, instead of the client's. */
  timeoutMs?: number;
  /**
   * Whether a connection failure or protocol timeout (the `retryable-within-deadline` class: 4, 5,
   * 8, 11, 33) runs the command again (default yes). A login whose record bounds iscsid's own
   * retries (`node.session.initial_login_retry_max`) has already been retried by iscsid.
   */
  retryConnectionFailures?: boolean;
}

/** Discovery (sendtargets) authentication, as `discovery.sendtargets.auth.*` takes it. */
export interface DiscoveryAuth {
  /** `CHAP` or `None`. */
  method: string;
  username?: string;
  password?: string;
  /** Mutual CHAP: the name the target answers with. */
  usernameIn?: string;
  /** Mutual CHAP: the target's secret. */
  passwordIn?: string;
}

/** One key of a node record to set (`nodeUpdateAll`). */
export interface RecordSetting {
  key: string;
  value: string;
  /** The value goes to the runner's `secrets` (passwords always do). */
  secret?: boolean;
}

/** Options of `discover`. */
export interface DiscoverOptions extends CallOptions {
  /** Sendtargets CHAP; with it discovery goes through a discoverydb record (os-brick's way). */
  auth?: DiscoveryAuth;
  /** The iface to discover through (default `default`). */
  iface?: string;
  /** Delete the discovery record afterwards, even when discovery failed (it stores the password). */
  deleteRecord?: boolean;
}

const zDiscoveryAuth = lazySchema(() => z.object({
  method: z.enum(['CHAP', 'None']),
  username: zRecordValue.optional(),
  password: zRecordValue.optional(),
  usernameIn: zRecordValue.optional(),
  passwordIn: zRecordValue.optional(),
}));

interface ExecSpec {
  op: IscsiadmOp;
  args: string[];
  what: string;
  secrets?: readonly string[];
  absenceOk?: boolean;
  /** Whether a failed result is the state wanted all the same (an op-specific benign case). */
  benign?: (result: CommandResult) => boolean;
}

interface ExecOutcome {
  result: CommandResult;
  exitClass: ExitClass;
}

// Keys whose values are passwords, whatever the caller says: they must reach `secrets`.
const SECRET_KEY = /password/i;

/**
 * A typed iscsiadm: each method is one iscsiadm command line (the ones os-brick runs), its exit
 * code classified, its output parsed. Retryable failures are retried with backoff within the
 * caller's signal; everything else throws an `IscsiadmError`. It decides nothing about when to log
 * in or out: that is the drivers' policy.
 */
export class IscsiadmClient {
  private readonly runner: CommandRunner;
  private readonly timeoutMs: number;
  private readonly retry: RetryPolicy;
  private readonly command: string;
  private readonly onRetry: IscsiadmClientOptions['onRetry'];

  constructor(options: IscsiadmClientOptions) {
    this.runner = options.runner;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_ISCSIADM_TIMEOUT_MS;
    if (!Number.isFinite(this.timeoutMs) || this.timeoutMs <= 0) {
      throw new BerthError('VALIDATION', `invalid iscsiadm timeout ${this.timeoutMs}: it must be a positive number of ms`);
    }
    this.retry = parseWith(zRetryPolicy, options.retry ?? DEFAULT_ISCSIADM_RETRY, 'iscsiadm retry policy');
    this.command = options.command ?? 'iscsiadm';
    this.onRetry = options.onRetry;
  }

  /** `iscsiadm --version` → `2.1.8`. */
  async version(options: CallOptions = {}): Promise<string> {
    const { result } = await this.exec({ op: 'version', args: ['--version'], what: 'iscsiadm --version' }, options);
    const match = /iscsiadm version (\S+)/.exec(result.stdout);
    if (!match?.[1]) throw new BerthError('COMMAND_FAILED', `iscsiadm --version printed no version: ${result.stdout.trim().slice(0, 200)}`);
    return match[1];
  }

  /**
   * The node record of `target` (`-m node -T IQN -p PORTAL`), `undefined` when there is none
   * (rc 21). Passwords read `********` unless `showSecrets` (`--op show --show`).
   */
  async nodeShow(target: IscsiTargetInput, options: CallOptions & { showSecrets?: boolean } = {}): Promise<IscsiRecord | undefined> {
    const t = toTarget(target);
    const args = [...nodeArgs(t), ...(options.showSecrets === true ? ['--op', 'show', '--show'] : [])];
    const { result, exitClass } = await this.exec(
      { op: 'node-show', args, what: `show the node record of ${describe(t)}`, absenceOk: true },
      options,
    );
    if (exitClass === 'benign') return undefined;
    return parseRecords(result.stdout)[0];
  }

  /**
   * Every node record at `portal`, whatever the target (`-m node --op show -p PORTAL`); `[]` when
   * none. os-brick reads `node.startup` from these before a discovery resets them.
   */
  async nodeShowByPortal(portal: string | Portal, options: CallOptions = {}): Promise<IscsiRecord[]> {
    const p = toPortal(portal);
    const { result, exitClass } = await this.exec(
      { op: 'node-show', args: ['-m', 'node', '--op', 'show', '-p', formatPortal(p)], what: `show the node records at ${formatPortal(p)}`, absenceOk: true },
      options,
    );
    return exitClass === 'benign' ? [] : parseRecords(result.stdout);
  }

  /** Every node record, whatever the target and portal (`-m node --op show`); `[]` when none. */
  async nodeShowAll(options: CallOptions = {}): Promise<IscsiRecord[]> {
    const { result, exitClass } = await this.exec({ op: 'node-show', args: ['-m', 'node', '--op', 'show'], what: 'show every node record', absenceOk: true }, options);
    return exitClass === 'benign' ? [] : parseRecords(result.stdout);
  }

  /**
   * Create the node record (`--interface IFACE --op new`). Over an existing record this resets it
   * to the defaults (CHAP and `node.startup` lost), so callers check with `nodeShow` first.
   */
  async nodeNew(target: IscsiTargetInput, iface = 'default', options: CallOptions = {}): Promise<void> {
    const t = toTarget(target);
    const name = parseWith(zIfaceName, iface, 'iscsiadm iface');
    await this.exec({ op: 'node-new', args: [...nodeArgs(t), '--interface', name, '--op', 'new'], what: `create the node record of ${describe(t)}` }, options);
  }

  /**
   * Set one key of the node record (`--op update -n KEY -v VALUE`). The value goes to the runner's
   * `secrets` when `secret` is set or the key is a password, so logs show `***`.
   */
  async nodeUpdate(
    target: IscsiTargetInput,
    key: string,
    value: string,
    options: CallOptions & { secret?: boolean } = {},
  ): Promise<void> {
    const t = toTarget(target);
    const k = parseWith(zRecordKey, key, 'iscsiadm record key');
    const secret = options.secret === true || SECRET_KEY.test(k);
    // The value itself must not reach an error message, so it is checked without zod's echo.
    if (!zRecordValue.safeParse(value).success) {
      throw new BerthError('VALIDATION', `invalid value for ${k}: at most 1024 characters and no control characters`);
    }
    await this.exec(
      {
        op: 'node-update',
        args: [...nodeArgs(t), '--op', 'update', '-n', k, '-v', value],
        what: `set ${k} of ${describe(t)}`,
        secrets: secret && value !== '' ? [value] : [],
      },
      options,
    );
  }

  /**
   * Set several keys of the node record in one `--op update` with a `-n`/`-v` pair per key
   * (iscsiadm applies every pair: one run instead of one per key). A password (or a setting marked
   * `secret`) reaches the runner only as a secret; keys and values are checked without echoing a
   * value. Nothing runs for an empty list.
   */
  async nodeUpdateAll(target: IscsiTargetInput, settings: readonly RecordSetting[], options: CallOptions = {}): Promise<void> {
    if (settings.length === 0) return;
    const t = toTarget(target);
    const args = [...nodeArgs(t), '--op', 'update'];
    const secrets: string[] = [];
    for (const s of settings) {
      const k = parseWith(zRecordKey, s.key, 'iscsiadm record key');
      if (!zRecordValue.safeParse(s.value).success) {
        throw new BerthError('VALIDATION', `invalid value for ${k}: at most 1024 characters and no control characters`);
      }
      if ((s.secret === true || SECRET_KEY.test(k)) && s.value !== '') secrets.push(s.value);
      args.push('-n', k, '-v', s.value);
    }
    await this.exec({ op: 'node-update', args, what: `set ${settings.map((s) => s.key).join(', ')} of ${describe(t)}`, secrets }, options);
  }

  /** Delete the node record (`--op delete`); `absent` when there was none (rc 21). */
  async nodeDelete(target: IscsiTargetInput, options: CallOptions = {}): Promise<'deleted' | 'absent'> {
    const t = toTarget(target);
    const { exitClass } = await this.exec({ op: 'node-delete', args: [...nodeArgs(t), '--op', 'delete'], what: `delete the node record of ${describe(t)}` }, options);
    return exitClass === 'benign' ? 'absent' : 'deleted';
  }

  /** Every node record (`-m node`): portal, tag (-1 when unset) and IQN; `[]` when none. */
  async nodeList(options: CallOptions = {}): Promise<PortalTarget[]> {
    const { result, exitClass } = await this.exec({ op: 'node-list', args: ['-m', 'node'], what: 'list the node records', absenceOk: true }, options);
    return exitClass === 'benign' ? [] : parsePortalTargets(result.stdout);
  }

  /** Every session (`-m session`); `[]` on "No active sessions." (rc 21). */
  async sessions(options: CallOptions = {}): Promise<SessionListEntry[]> {
    const { result, exitClass } = await this.exec({ op: 'session-list', args: ['-m', 'session'], what: 'list the iSCSI sessions', absenceOk: true }, options);
    return exitClass === 'benign' ? [] : parseSessionList(result.stdout);
  }

  /** Log in (`--login`); `already-present` when a session existed (rc 15). */
  async login(target: IscsiTargetInput, options: CallOptions = {}): Promise<'logged-in' | 'already-present'> {
    const t = toTarget(target);
    const { exitClass } = await this.exec({ op: 'login', args: [...nodeArgs(t), '--login'], what: `log in to ${describe(t)}` }, options);
    return exitClass === 'benign' ? 'already-present' : 'logged-in';
  }

  /** Log out (`--logout`); `absent` when there was no session (rc 21). */
  async logout(target: IscsiTargetInput, options: CallOptions = {}): Promise<'logged-out' | 'absent'> {
    const t = toTarget(target);
    const { exitClass } = await this.exec({ op: 'logout', args: [...nodeArgs(t), '--logout'], what: `log out of ${describe(t)}` }, options);
    return exitClass === 'benign' ? 'absent' : 'logged-out';
  }

  /**
   * SendTargets discovery through `portal`: the portals and targets it returned (`[]` for "No
   * portals found"). Without auth it runs `-m discovery`; with auth it makes a discoverydb
   * record, sets its CHAP keys and runs `--discover`, as os-brick does. Discovery rewrites the
   * returned node records with defaults: callers that care save `node.startup` first.
   */
  async discover(portal: string | Portal, options: DiscoverOptions = {}): Promise<PortalTarget[]> {
    const p = toPortal(portal);
    const iface = parseWith(zIfaceName, options.iface ?? 'default', 'iscsiadm iface');
    const call: CallOptions = pickCall(options);
    let discovered: PortalTarget[];
    try {
      if (options.auth === undefined) {
        const { result, exitClass } = await this.exec(
          {
            op: 'discovery',
            args: ['-m', 'discovery', '-t', 'sendtargets', '-I', iface, '-p', formatPortal(p)],
            what: `discover targets at ${formatPortal(p)}`,
            absenceOk: true,
          },
          call,
        );
        discovered = exitClass === 'benign' ? [] : parsePortalTargets(result.stdout);
      } else {
        await this.discoverydbNew(p, iface, call);
        await this.discoverydbUpdate(p, options.auth, iface, call);
        const { result, exitClass } = await this.exec(
          {
            op: 'discovery',
            args: ['-m', 'discoverydb', '-t', 'sendtargets', '-I', iface, '-p', formatPortal(p), '--discover'],
            what: `discover targets at ${formatPortal(p)}`,
            absenceOk: true,
            secrets: authSecrets(options.auth),
          },
          call,
        );
        discovered = exitClass === 'benign' ? [] : parsePortalTargets(result.stdout);
      }
    } catch (error) {
      if (options.deleteRecord === true) {
        // The discovery's own failure is what the caller needs; a failed cleanup must not hide it.
        await this.discoverydbDelete(p, call).catch(() => undefined);
      }
      throw error;
    }
    if (options.deleteRecord === true) await this.discoverydbDelete(p, call);
    return discovered;
  }

  /**
   * SendTargets through the discovery record of `portal` (`-m discoverydb -t sendtargets -I IFACE
   * -p P --discover`, with `--op nonpersistent` unless `persistent`): the portals and targets it
   * returned, `[]` for "No portals found". Nonpersistent leaves the node records alone; open-iscsi's
   * default rewrites every returned record with defaults. `secrets` masks what the record holds.
   */
  async discoverydbDiscover(
    portal: string | Portal,
    options: CallOptions & { iface?: string; persistent?: boolean; secrets?: readonly string[] } = {},
  ): Promise<PortalTarget[]> {
    const p = toPortal(portal);
    const iface = parseWith(zIfaceName, options.iface ?? 'default', 'iscsiadm iface');
    const args = ['-m', 'discoverydb', '-t', 'sendtargets', '-I', iface, '-p', formatPortal(p), '--discover', ...(options.persistent === true ? [] : ['--op', 'nonpersistent'])];
    const { result, exitClass } = await this.exec(
      { op: 'discovery', args, what: `discover the targets at ${formatPortal(p)}`, absenceOk: true, secrets: options.secrets ?? [] },
      pickCall(options),
    );
    return exitClass === 'benign' ? [] : parsePortalTargets(result.stdout);
  }

  /** Create the sendtargets discovery record of `portal` (`-m discoverydb … --op new`). */
  async discoverydbNew(portal: string | Portal, iface = 'default', options: CallOptions = {}): Promise<void> {
    const p = toPortal(portal);
    const name = parseWith(zIfaceName, iface, 'iscsiadm iface');
    await this.exec(
      {
        op: 'discoverydb-new',
        args: ['-m', 'discoverydb', '-t', 'sendtargets', '-p', formatPortal(p), '-I', name, '--op', 'new'],
        what: `create the discovery record of ${formatPortal(p)}`,
      },
      options,
    );
  }

  /** Set the discovery record's CHAP keys in one `--op update` with a `-n`/`-v` pair per key. */
  async discoverydbUpdate(portal: string | Portal, auth: DiscoveryAuth, iface = 'default', options: CallOptions = {}): Promise<void> {
    const p = toPortal(portal);
    const name = parseWith(zIfaceName, iface, 'iscsiadm iface');
    const a = zDiscoveryAuth.safeParse(auth);
    if (!a.success) {
      // zod would echo the password back in its message.
      throw new BerthError('VALIDATION', 'invalid discovery auth: method must be CHAP or None, and no value may hold a control character');
    }
    const prefix = 'discovery.sendtargets.auth.';
    const pairs: Array<[string, string | undefined]> = [
      ['authmethod', a.data.method],
      ['username', a.data.username],
      ['password', a.data.password],
      ['username_in', a.data.usernameIn],
      ['password_in', a.data.passwordIn],
    ];
    const args = ['-m', 'discoverydb', '-t', 'sendtargets', '-I', name, '-p', formatPortal(p), '--op', 'update'];
    for (const [key, value] of pairs) if (value !== undefined) args.push('-n', prefix + key, '-v', value);
    await this.exec(
      { op: 'discoverydb-update', args, what: `set the discovery CHAP of ${formatPortal(p)}`, secrets: authSecrets(auth) },
      options,
    );
  }

  /** Delete the discovery record of `portal`; `absent` when there was none (rc 6 "not found"). */
  async discoverydbDelete(portal: string | Portal, options: CallOptions = {}): Promise<'deleted' | 'absent'> {
    const p = toPortal(portal);
    const { exitClass } = await this.exec(
      {
        op: 'discoverydb-delete',
        args: ['-m', 'discoverydb', '-t', 'sendtargets', '-p', formatPortal(p), '--op', 'delete'],
        what: `delete the discovery record of ${formatPortal(p)}`,
        // rc 6 is also a real database failure; only the "not found" message means absence.
        benign: (r) => r.exitCode === 6 && /Discovery record \[.*\] not found/.test(r.stderr),
      },
      options,
    );
    return exitClass === 'benign' ? 'absent' : 'deleted';
  }

  /** Rescan every LUN of session `sid` (`-m session -r SID --rescan`). */
  async rescanSession(sid: number, options: CallOptions = {}): Promise<void> {
    const id = parseWith(z.number().int().nonnegative(), sid, 'iSCSI session id');
    await this.exec({ op: 'rescan', args: ['-m', 'session', '-r', String(id), '--rescan'], what: `rescan session ${id}` }, options);
  }

  /** Run one iscsiadm command with retries; resolves on success or a benign code, else throws. */
  private async exec(spec: ExecSpec, options: CallOptions): Promise<ExecOutcome> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const { signal } = options;
    const secrets = spec.secrets ?? [];
    const once = async (): Promise<ExecOutcome> => {
      let result: CommandResult;
      try {
        result = await this.runner.run(this.command, spec.args, {
          timeoutMs,
          secrets,
          reject: false,
          ...(signal === undefined ? {} : { signal }),
        });
      } catch (error) {
        // A runner may throw even with `reject: false` (a test double, a spawn failure).
        const thrown = commandResultOf(error);
        if (thrown === undefined) throw error;
        result = thrown;
      }
      const exitClass = classifyResult(spec.op, result, { absenceOk: spec.absenceOk === true });
      if (exitClass === 'success' || exitClass === 'benign') return { result, exitClass };
      if (spec.benign?.(result) === true) return { result, exitClass: 'benign' };
      throw toIscsiadmError(result, {
        op: spec.op,
        what: spec.what,
        secrets,
        absenceOk: spec.absenceOk === true,
        timeoutMs,
        ...(signal === undefined ? {} : { signal }),
      });
    };
    const noConnectionRetry = options.retryConnectionFailures === false;
    return withRetry(once, {
      ...this.retry,
      ...(noConnectionRetry
        ? { isRetryable: (error: unknown) => isRetryableIscsiadmError(error) && (error as IscsiadmError).exitClass !== 'retryable-within-deadline' }
        : {}),
      ...(signal === undefined ? {} : { signal }),
      ...(this.onRetry === undefined ? {} : { onRetry: (event: RetryEvent) => this.onRetry?.({ ...event, op: spec.op }) }),
    });
  }
}

function nodeArgs(target: IscsiTarget): string[] {
  return ['-m', 'node', '-T', target.iqn, '-p', formatPortal(target.portal)];
}

function describe(target: IscsiTarget): string {
  return `${target.iqn} at ${formatPortal(target.portal)}`;
}

function authSecrets(auth: DiscoveryAuth): string[] {
  return [auth.password, auth.passwordIn].filter((s): s is string => s !== undefined && s !== '');
}

function pickCall(options: CallOptions): CallOptions {
  return {
    ...(options.signal === undefined ? {} : { signal: options.signal }),
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
    ...(options.retryConnectionFailures === undefined ? {} : { retryConnectionFailures: options.retryConnectionFailures }),
  };
}
