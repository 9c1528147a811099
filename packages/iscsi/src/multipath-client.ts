import { BerthError, lazySchema, parseWith } from '@berth/core';
import type { CommandResult, CommandRunner, HostFs } from '@berth/host';
import { z } from '@berth/core/zod';
import { commandResultOf } from './iscsiadm-error.js';
import {
  multipathMessages,
  parseFindMultipaths,
  parseMultipathdDeviceList,
  parseMultipathdStatus,
  summarizeMultipathOutput,
  type MultipathdStatus,
} from './multipath-output.js';
import { blockName } from './sysfs-read.js';
import { withRetry, zRetryPolicy, type RetryEvent, type RetryPolicy } from './with-retry.js';

/** The per-command timeout when none is given (multipath talks to multipathd, which may be busy). */
export const DEFAULT_MULTIPATH_TIMEOUT_MS = 30_000;

/** How `flushMap` retries a map that is still in use when none is given: 4 tries, 250 ms doubling. */
export const DEFAULT_FLUSH_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 250, maxDelayMs: 4_000 };

/** Where multipath-tools keeps its configuration. */
export const MULTIPATH_CONF = '/etc/multipath.conf';

/** Options of `MultipathClient`. */
export interface MultipathClientOptions {
  /** Runs multipath and multipathd; the only way this client starts a process. */
  runner: CommandRunner;
  /** Timeout of each run in ms (default 30 000). */
  timeoutMs?: number;
  /** The executables, looked up on PATH (default `multipath`, `multipathd`). */
  multipathCommand?: string;
  multipathdCommand?: string;
}

/** Options every call takes. */
export interface MultipathCallOptions {
  /** Stop the command (and any retry) when this fires. */
  signal?: AbortSignal;
  /** This call's timeout per run, in ms, instead of the client's. */
  timeoutMs?: number;
}

/** Whether multipathd answers: what `multipathd show status` says. */
export type MultipathdState =
  | { state: 'running'; status: MultipathdStatus }
  | { state: 'not-running'; detail: string }
  | { state: 'not-installed'; detail: string };

/** What `multipath -C dm-N` says of a map. */
export type MapUsability =
  | { usable: true }
  | { usable: false; detail: string }
  /** This multipath has no `-C` (older than the os-brick master it comes from): check another way. */
  | { usable: 'unknown'; detail: string };

/** Options of `flushMap`. */
export interface FlushMapOptions extends MultipathCallOptions {
  /** Retries while the map is in use (default `DEFAULT_FLUSH_RETRY`). */
  retry?: RetryPolicy;
  /** Called before each retry. */
  onRetry?: (event: RetryEvent) => void;
}

// A wwid or map name goes into argv: refuse anything an option parser could take as a flag, and
// control characters. udev's wwids are `3<hex>` for NAA, but t10 ones may hold spaces.
const zWwid = lazySchema(() => z
  .string()
  .min(1)
  .max(256)
  .regex(/^[^\s\x00-\x1f\x7f-][^\x00-\x1f\x7f]*$/, 'not a wwid'));
const zMapName = lazySchema(() => z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9_][A-Za-z0-9_.:+-]*$/, 'not a multipath map name'));

/** A multipath run that failed (signal and not-installed cases included). */
class MultipathRunError extends BerthError {}

/**
 * A typed multipath-tools 0.9.4: each method is one `multipath` or `multipathd` command line (the
 * ones os-brick runs), its exit code read the way KERNEL-MODEL §5 says (`multipath` exits 0 or 1;
 * `multipathd` exits 1 only for `fail` or when it cannot reach the daemon, silently). It decides
 * nothing about when to make or flush a map: that is the drivers' policy.
 */
export class MultipathClient {
  private readonly runner: CommandRunner;
  private readonly timeoutMs: number;
  private readonly multipath: string;
  private readonly multipathd: string;

  constructor(options: MultipathClientOptions) {
    this.runner = options.runner;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_MULTIPATH_TIMEOUT_MS;
    if (!Number.isFinite(this.timeoutMs) || this.timeoutMs <= 0) {
      throw new BerthError('VALIDATION', `invalid multipath timeout ${this.timeoutMs}: it must be a positive number of ms`);
    }
    this.multipath = options.multipathCommand ?? 'multipath';
    this.multipathd = options.multipathdCommand ?? 'multipathd';
  }

  /**
   * Whether multipathd runs: `multipathd show status` exits 0 with its status when it answers,
   * and 1 with no output when it cannot reach the daemon (os-brick treats rc 0 as "running").
   */
  async daemonState(options: MultipathCallOptions = {}): Promise<MultipathdState> {
    const result = await this.exec(this.multipathd, ['show', 'status'], options, { throwOnFailure: false });
    if (result.notFound === true) return { state: 'not-installed', detail: 'multipathd is not installed' };
    if (result.aborted) throw this.failure(this.multipathd, result, 'ask multipathd for its status', options);
    if (result.timedOut) return { state: 'not-running', detail: `multipathd did not answer within ${options.timeoutMs ?? this.timeoutMs} ms` };
    if (result.exitCode === 0) return { state: 'running', status: parseMultipathdStatus(result.stdout) };
    const said = summarizeMultipathOutput(result.stderr, result.stdout);
    return { state: 'not-running', detail: said === '' ? 'multipathd does not answer on its socket' : said };
  }

  /**
   * `multipath -a WWID`: list the wwid in /etc/multipath/wwids, so that multipathd (under
   * `find_multipaths strict` or `yes`) makes a map for it. It prints `wwid 'W' added`, also when
   * the wwid was listed already.
   */
  async addWwid(wwid: string, options: MultipathCallOptions = {}): Promise<void> {
    const w = parseWith(zWwid, wwid, 'multipath wwid');
    const result = await this.exec(this.multipath, ['-a', w], options, { what: `add wwid ${w} to the multipath wwids file` });
    if (!multipathMessages(result.stdout).some((l) => l === `wwid '${w}' added`)) {
      throw new BerthError('COMMAND_FAILED', `multipath -a ${w} did not confirm: ${summarizeMultipathOutput(result.stderr, result.stdout) || '(no output)'}`, {
        hint: 'check that /etc/multipath/wwids is writable and run `multipath -a WWID` by hand',
        details: { command: result.command },
      });
    }
  }

  /**
   * `multipathd add path /dev/sdX`: ask multipathd to take the path (it then makes or reloads
   * the map of its wwid). `blacklisted` when multipath.conf excludes it (rc 0 all the same).
   */
  async addPath(device: string, options: MultipathCallOptions = {}): Promise<'added' | 'blacklisted'> {
    const dev = `/dev/${blockName(device)}`;
    const result = await this.exec(this.multipathd, ['add', 'path', dev], options, { what: `ask multipathd to add path ${dev}` });
    return /blacklisted/i.test(result.stdout) ? 'blacklisted' : 'added';
  }

  /** `multipathd del path /dev/sdX`; `absent` when multipathd did not know it (`fail`). */
  async delPath(device: string, options: MultipathCallOptions = {}): Promise<'deleted' | 'absent'> {
    const dev = `/dev/${blockName(device)}`;
    const result = await this.exec(this.multipathd, ['del', 'path', dev], options, { throwOnFailure: false });
    if (result.exitCode === 0) return 'deleted';
    if (isCommandReply(result, 'fail')) return 'absent';
    throw this.failure(this.multipathd, result, `ask multipathd to delete path ${dev}`, options);
  }

  /**
   * `multipath -C dm-N`: whether the map has a path that is checker-up and dm-active (rc 0), or
   * none (rc 1, `dm-N: no usable paths found`). A multipath without `-C` answers with its usage:
   * `usable: 'unknown'`.
   */
  async mapUsability(dm: string, options: MultipathCallOptions = {}): Promise<MapUsability> {
    const name = blockName(dm);
    const result = await this.exec(this.multipath, ['-C', name], options, { throwOnFailure: false });
    if (result.exitCode === 0 && !result.timedOut && !result.aborted) return { usable: true };
    if (result.notFound === true || result.aborted || result.timedOut) throw this.failure(this.multipath, result, `check multipath map ${name}`, options);
    const said = summarizeMultipathOutput(result.stderr, result.stdout);
    if (/no usable paths/i.test(said)) return { usable: false, detail: said };
    if (/invalid option|usage:|unknown option/i.test(`${result.stderr}\n${result.stdout}`)) {
      return { usable: 'unknown', detail: 'this multipath has no -C option' };
    }
    return { usable: false, detail: said === '' ? `multipath -C ${name} exited ${result.exitCode}` : said };
  }

  /**
   * `multipath -f NAME`: flush and remove the map, retrying while it is in use (a last writer, udev
   * holding it open for a moment: the bounded retries os-brick also makes). `absent` when there is
   * no such map (`NAME is not a multipath device`).
   */
  async flushMap(name: string, options: FlushMapOptions = {}): Promise<'flushed' | 'absent'> {
    const map = parseWith(zMapName, name, 'multipath map name');
    const retry = parseWith(zRetryPolicy, options.retry ?? DEFAULT_FLUSH_RETRY, 'flush retry policy');
    return withRetry(
      async () => {
        const result = await this.exec(this.multipath, ['-f', map], options, { throwOnFailure: false });
        if (result.exitCode === 0 && !result.timedOut && !result.aborted) return 'flushed' as const;
        if (!result.aborted && !result.timedOut && result.notFound !== true && /is not a multipath device/i.test(result.stderr + result.stdout)) {
          return 'absent' as const;
        }
        throw this.failure(this.multipath, result, `flush multipath map ${map}`, options, {
          hint: `the map is still open (a mount, a process, a holder such as LVM): close it, then run \`multipath -f ${map}\`; \`dmsetup info ${map}\` shows its open count`,
        });
      },
      {
        ...retry,
        ...(options.signal === undefined ? {} : { signal: options.signal }),
        ...(options.onRetry === undefined ? {} : { onRetry: options.onRetry }),
        // Only a map that is still there and busy may free itself; a missing tool will not appear.
        isRetryable: (error) => error instanceof MultipathRunError && error.details['retryable'] === true,
      },
    );
  }

  /** `multipathd del map NAME` (os-brick's last resort after a failed forced flush); `failed` on `fail`. */
  async delMap(name: string, options: MultipathCallOptions = {}): Promise<'deleted' | 'failed'> {
    const map = parseWith(zMapName, name, 'multipath map name');
    const result = await this.exec(this.multipathd, ['del', 'map', map], options, { throwOnFailure: false });
    if (result.exitCode === 0) return 'deleted';
    if (isCommandReply(result, 'fail')) return 'failed';
    throw this.failure(this.multipathd, result, `ask multipathd to delete map ${map}`, options);
  }

  /** Every path device multipathd knows (`show paths raw format %d`), orphans included. */
  async pathDevices(options: MultipathCallOptions = {}): Promise<string[]> {
    const result = await this.exec(this.multipathd, ['show', 'paths', 'raw', 'format', '%d'], options, { what: 'list multipathd\'s paths' });
    return parseMultipathdDeviceList(result.stdout);
  }

  /** What `multipath -t` prints: the configuration in effect, defaults included. */
  async showConfig(options: MultipathCallOptions = {}): Promise<string> {
    const result = await this.exec(this.multipath, ['-t'], options, { what: 'print the multipath configuration' });
    return result.stdout;
  }

  /** Run one command; by default throws on any failure. */
  private async exec(
    file: string,
    args: string[],
    options: MultipathCallOptions,
    spec: { what?: string; throwOnFailure?: boolean },
  ): Promise<CommandResult> {
    let result: CommandResult;
    try {
      result = await this.runner.run(file, args, {
        timeoutMs: options.timeoutMs ?? this.timeoutMs,
        reject: false,
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      });
    } catch (error) {
      const thrown = commandResultOf(error);
      if (thrown === undefined) throw error;
      result = thrown;
    }
    const failed = result.exitCode !== 0 || result.timedOut || result.aborted || result.notFound === true;
    if (failed && spec.throwOnFailure !== false) throw this.failure(file, result, spec.what ?? `${file} ${args.join(' ')}`, options);
    return result;
  }

  private failure(tool: string, result: CommandResult, what: string, options: MultipathCallOptions, extra: { hint?: string } = {}): MultipathRunError {
    const details = { command: result.command, exitCode: result.exitCode };
    if (result.aborted) {
      const reason: unknown = options.signal?.reason;
      const deadline = BerthError.is(reason) && reason.code === 'TIMEOUT';
      return new MultipathRunError(deadline ? 'TIMEOUT' : 'CANCELLED', `${what}: ${tool} stopped ${deadline ? 'at the operation\'s deadline' : 'because the operation was cancelled'}`, {
        cause: reason,
        details,
      });
    }
    if (result.timedOut) {
      return new MultipathRunError('TIMEOUT', `${what}: ${tool} did not finish within ${options.timeoutMs ?? this.timeoutMs} ms`, {
        hint: 'multipathd may be busy or stuck: check `systemctl status multipathd` and `multipathd show status`',
        details: { ...details, retryable: true },
      });
    }
    if (result.notFound === true) {
      return new MultipathRunError('HOST_UNSUPPORTED', `${what}: ${tool} is not installed`, {
        hint: 'install multipath-tools: apt-get install -y multipath-tools, then systemctl enable --now multipathd',
        details,
      });
    }
    const said = summarizeMultipathOutput(result.stderr, result.stdout);
    const daemonDown = tool === this.multipathd && said === '' && result.exitCode === 1;
    return new MultipathRunError(
      daemonDown ? 'HOST_UNSUPPORTED' : 'COMMAND_FAILED',
      `${what}: ${tool} exit ${result.exitCode}${said === '' ? (daemonDown ? ' (multipathd is not running)' : '') : `: ${said}`}`,
      {
        ...(extra.hint !== undefined ? { hint: extra.hint } : daemonDown ? { hint: 'start multipathd: systemctl start multipathd' } : {}),
        details: { ...details, retryable: !daemonDown },
      },
    );
  }
}

function isCommandReply(result: CommandResult, reply: string): boolean {
  return result.exitCode === 1 && result.stdout.trim() === reply;
}

/** Where a `find_multipaths` value came from. */
export type FindMultipathsSource = 'multipath -t' | typeof MULTIPATH_CONF | 'default';

/**
 * The `find_multipaths` policy in effect: from `multipath -t` (the merged configuration), else
 * from /etc/multipath.conf, else multipath-tools 0.9.4's default, `strict`.
 */
export async function readFindMultipaths(
  deps: { client: MultipathClient; fs: HostFs },
  options: MultipathCallOptions = {},
): Promise<{ value: string; source: FindMultipathsSource }> {
  try {
    const value = parseFindMultipaths(await deps.client.showConfig(options));
    if (value !== undefined) return { value, source: 'multipath -t' };
  } catch (error) {
    // `multipath -t` needs the tool only; a missing tool or an odd version leaves the file to read.
    if (options.signal?.aborted === true) throw error;
  }
  const text = await deps.fs.readFileIfExists(MULTIPATH_CONF);
  const value = text === undefined ? undefined : parseFindMultipaths(text);
  return value === undefined ? { value: 'strict', source: 'default' } : { value, source: MULTIPATH_CONF };
}
