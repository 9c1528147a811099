import { CommandError, WaitTimeoutError } from '@berth/host';
import { BerthError, toBerthError } from '@berth/core';
import { classifyLosetupError } from './losetup.js';

/** The tools the loop transport runs and the Debian package that ships each. */
export const TOOL_PACKAGES = {
  losetup: 'mount',
  blockdev: 'util-linux',
  sync: 'coreutils',
} as const;

/** A tool the loop transport runs. */
export type LoopTool = keyof typeof TOOL_PACKAGES;

/** The hint for a missing tool. */
export function installHint(tool: LoopTool): string {
  return `install ${tool}: apt-get install -y ${TOOL_PACKAGES[tool]} (it ships /sbin/${tool})`;
}

/** The hint for anything that needs root. */
export const ROOT_HINT = 'run berth as root: attaching and detaching loop devices needs CAP_SYS_ADMIN';

function isCommandError(error: unknown): error is CommandError {
  return error instanceof CommandError || (error instanceof Error && error.name === 'CommandError' && 'result' in error);
}

/** Turn a failed losetup/blockdev run (or anything else thrown) into a BerthError a user can act on. */
export function toLoopError(error: unknown, tool: LoopTool, what: string): BerthError {
  if (BerthError.is(error)) return error;
  if (error instanceof WaitTimeoutError) {
    return new BerthError('TIMEOUT', `${what}: ${error.message}`, {
      cause: error,
      hint: 'the loop device did not change in time; raise the loop transport\'s deviceTimeoutMs option or look at `dmesg`',
    });
  }
  if (!isCommandError(error)) return toBerthError(error, 'DRIVER_ERROR');
  const { result } = error;
  const details = { command: result.command, exitCode: result.exitCode };
  if (error.notFound) {
    return new BerthError('HOST_UNSUPPORTED', `${what}: ${tool} is not installed`, { cause: error, details, hint: installHint(tool) });
  }
  if (result.aborted) return new BerthError('CANCELLED', `${what}: cancelled`, { cause: error, details });
  if (result.timedOut) {
    return new BerthError('TIMEOUT', `${what}: ${tool} did not finish in time`, {
      cause: error,
      details,
      hint: 'raise the loop transport\'s commandTimeoutMs option, or look at `dmesg` for a stuck device',
    });
  }
  // The runner has already redacted stderr; loop connections carry no secrets anyway.
  const stderr = result.stderr.trim();
  switch (classifyLosetupError(stderr)) {
    case 'permission':
      return new BerthError('PERMISSION_DENIED', `${what}: ${stderr}`, { cause: error, details, hint: ROOT_HINT });
    case 'no-free-device':
      return new BerthError('HOST_UNSUPPORTED', `${what}: no free loop device: ${stderr}`, {
        cause: error,
        details,
        hint: 'detach loop devices no longer in use (`losetup --list`, `losetup --detach /dev/loopN`), or raise the kernel\'s max_loop / load the loop module',
      });
    case 'missing-file':
      return new BerthError('NOT_FOUND', `${what}: ${stderr}`, {
        cause: error,
        details,
        hint: 'the volume file is gone: check the volume with `berth volume show`',
      });
    default:
      return new BerthError('DRIVER_ERROR', `${what}: ${stderr || error.message}`, { cause: error, details });
  }
}
