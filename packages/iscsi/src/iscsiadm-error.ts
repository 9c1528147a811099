import { BerthError, type BerthErrorCode } from '@berth/core';
import { CommandError, redact, type CommandResult } from '@berth/host';
import { classifyResult, ISCSI_ERRORS, iscsiErrorName, type ExitClass, type IscsiadmOp } from './exit-codes.js';
import { summarizeIscsiadmStderr } from './iscsiadm-messages.js';

/** Fields of an `IscsiadmError` beyond those of a BerthError. */
export interface IscsiadmErrorFields {
  op: IscsiadmOp;
  /** iscsiadm's exit code; -1 when it was killed (timeout, abort) or not found. */
  iscsiadmExitCode: number;
  /** The open-iscsi name of the code (`LOGIN_AUTH_FAILED`), or `TIMEOUT`, `ABORTED`, `NOT_INSTALLED`. */
  errorName: string;
  exitClass: ExitClass;
  /** The command line, secrets masked. */
  command: string;
}

/**
 * A failed iscsiadm run: a BerthError (so the CLI and API print its code and hint) that also says
 * which exit code iscsiadm returned and whether a retry may help. The iscsiadm code is
 * `iscsiadmExitCode` because BerthError's `exitCode` is the CLI's.
 */
export class IscsiadmError extends BerthError implements IscsiadmErrorFields {
  readonly op: IscsiadmOp;
  readonly iscsiadmExitCode: number;
  readonly errorName: string;
  readonly exitClass: ExitClass;
  readonly command: string;

  constructor(
    code: BerthErrorCode,
    message: string,
    fields: IscsiadmErrorFields,
    options: { hint?: string; cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(code, message, {
      ...(options.hint === undefined ? {} : { hint: options.hint }),
      cause: options.cause,
      details: {
        command: fields.command,
        op: fields.op,
        iscsiadmExitCode: fields.iscsiadmExitCode,
        iscsiadmError: fields.errorName,
        class: fields.exitClass,
        ...options.details,
      },
    });
    this.op = fields.op;
    this.iscsiadmExitCode = fields.iscsiadmExitCode;
    this.errorName = fields.errorName;
    this.exitClass = fields.exitClass;
    this.command = fields.command;
  }

  /** Whether `value` is an IscsiadmError (also across duplicated module copies). */
  static isIscsiadmError(value: unknown): value is IscsiadmError {
    return (
      value instanceof IscsiadmError ||
      (BerthError.is(value) && typeof (value as Partial<IscsiadmError>).iscsiadmExitCode === 'number' &&
        typeof (value as Partial<IscsiadmError>).exitClass === 'string')
    );
  }
}

/** The BerthError code and hint for an iscsiadm exit code. */
export function berthCodeFor(exitCode: number, op: IscsiadmOp): { code: BerthErrorCode; hint?: string } {
  switch (exitCode) {
    case 24:
      return {
        code: 'AUTH_FAILED',
        hint: 'check the CHAP user name and password (auth_username/auth_password, and auth_username_in/auth_password_in for mutual CHAP) against the target\'s accounts',
      };
    case 19:
      return {
        code: 'UNPROCESSABLE',
        hint: 'the target is missing on that portal or its ACL refuses this initiator: check the IQN and portal, and that the backend allowed this host\'s initiator name (`berth connector`)',
      };
    case 8:
    case 11:
    case 33:
      return {
        code: 'TIMEOUT',
        hint: 'the portal did not answer in time: check that it is reachable from this host and that the target service runs',
      };
    case 4:
    case 5:
      return {
        code: 'DRIVER_ERROR',
        hint: 'the connection to the portal failed: check the portal address, the network path and the target service',
      };
    case 18:
    case 20:
      return { code: 'HOST_UNSUPPORTED', hint: 'start iscsid (`systemctl start iscsid`, or run `iscsid`), then check `berth doctor`' };
    case 12:
      return {
        code: 'HOST_UNSUPPORTED',
        hint: 'the iscsi_tcp kernel module is not loaded: run `modprobe iscsi_tcp` (in a container, the host must load it)',
      };
    case 6:
      return {
        code: 'DRIVER_ERROR',
        hint: 'open-iscsi could not read or write its database under /etc/iscsi: check free space and permissions',
      };
    case 7:
      return { code: 'DRIVER_ERROR', hint: 'iscsiadm refused a parameter: this is a bug in the caller, report it with the command line' };
    case 2:
    case 21:
    case 22:
      return {
        code: 'NOT_FOUND',
        hint: op === 'login' || op === 'node-update'
          ? 'the node record does not exist: create it first (`iscsiadm -m node --op new`)'
          : 'no such node record or session: check the IQN and portal with `iscsiadm -m node` and `iscsiadm -m session`',
      };
    case 15:
      return { code: 'CONFLICT', hint: 'a session still uses this node record: log out of it first' };
    case 28:
      return { code: 'CONFLICT', hint: 'the session\'s devices are still in use: unmount or close them first' };
    default:
      return { code: 'COMMAND_FAILED' };
  }
}

/** What `toIscsiadmError` needs besides the result. */
export interface ToIscsiadmErrorOptions {
  op: IscsiadmOp;
  /** What was being done, for the message (`login to IQN at PORTAL`). */
  what: string;
  /** Values to mask in the message (the runner masks only what it logs). */
  secrets?: readonly string[];
  absenceOk?: boolean;
  /** The signal the command ran under: its reason says whether an abort was a deadline. */
  signal?: AbortSignal;
  /** The per-command timeout, for the message. */
  timeoutMs?: number;
}

/** The IscsiadmError for a failed iscsiadm run. */
export function toIscsiadmError(result: CommandResult, options: ToIscsiadmErrorOptions): IscsiadmError {
  const secrets = options.secrets ?? [];
  const exitClass = classifyResult(options.op, result, { absenceOk: options.absenceOk === true });
  const base = { op: options.op, iscsiadmExitCode: result.exitCode, exitClass, command: result.command };
  const summary = redact(summarizeIscsiadmStderr(result.stderr || result.stdout), secrets);
  const tail = summary === '' ? '' : `: ${summary}`;

  if (result.aborted) {
    const reason = options.signal?.reason;
    const deadline = BerthError.is(reason) && reason.code === 'TIMEOUT';
    return new IscsiadmError(
      deadline ? 'TIMEOUT' : 'CANCELLED',
      `${options.what}: iscsiadm stopped ${deadline ? 'at the operation\'s deadline' : 'because the operation was cancelled'}`,
      { ...base, errorName: 'ABORTED' },
      { cause: reason, ...(deadline && BerthError.is(reason) && reason.hint ? { hint: reason.hint } : {}) },
    );
  }
  if (result.timedOut) {
    return new IscsiadmError(
      'TIMEOUT',
      `${options.what}: iscsiadm did not finish within ${options.timeoutMs ?? Math.round(result.durationMs)} ms`,
      { ...base, errorName: 'TIMEOUT' },
      { hint: 'the host may be overloaded or iscsid stuck: check `systemctl status iscsid`, or raise the iSCSI command timeout' },
    );
  }
  if (result.notFound === true) {
    return new IscsiadmError(
      'HOST_UNSUPPORTED',
      `${options.what}: iscsiadm is not installed`,
      { ...base, errorName: 'NOT_INSTALLED' },
      { hint: 'install open-iscsi: apt-get install -y open-iscsi' },
    );
  }
  const errorName = iscsiErrorName(result.exitCode);
  const known = ISCSI_ERRORS[result.exitCode];
  const { code, hint } = berthCodeFor(result.exitCode, options.op);
  return new IscsiadmError(
    code,
    `${options.what}: iscsiadm exit ${result.exitCode} (${errorName}${known?.message ? `: ${known.message}` : ''})${tail}`,
    { ...base, errorName },
    hint === undefined ? {} : { hint },
  );
}

/** The command result inside anything a CommandRunner may throw, or `undefined`. */
export function commandResultOf(error: unknown): CommandResult | undefined {
  if (error instanceof CommandError) return error.result;
  if (error instanceof Error && error.name === 'CommandError' && 'result' in error) {
    return (error as CommandError).result;
  }
  return undefined;
}
