import type { CheckResult } from '@berth/core';
import type { CommandResult, CommandRunner, HostFs } from '@berth/host';
import { IscsiadmError } from './iscsiadm-error.js';
import type { IscsiadmClient } from './iscsiadm-client.js';
import { INITIATOR_NAME_FILE, readInitiatorName } from './initiator-name.js';

/** What to do about each failed initiator check. */
export const INITIATOR_FIXES = {
  install: 'apt-get install -y open-iscsi',
  iscsid: 'start iscsid: systemctl start iscsid (or run `iscsid`)',
  transport: 'load the kernel initiator: modprobe iscsi_tcp (a kernel without it cannot log in: use `berth --simulate` to run on the simulated host instead)',
  initiator: `set this host's initiator name: echo "InitiatorName=$(iscsi-iname)" > ${INITIATOR_NAME_FILE} (the open-iscsi package does it on install), then restart iscsid`,
} as const;

/** The findings of `checkInitiatorHost`, for a transport to add its own and summarise. */
export interface InitiatorHostFindings {
  checks: NonNullable<CheckResult['checks']>;
  /** One fix per failed check, in order. */
  fixes: string[];
  /** Short facts for a summary line (`open-iscsi 2.1.8`, `iscsid running`). */
  parts: string[];
  /** This host's initiator IQN, when set. */
  initiator: string | undefined;
}

/**
 * Whether this host's kernel initiator can log in: iscsiadm installed (its version), iscsid
 * answering (`iscsiadm -m session`: rc 0 or 21 "No active sessions" answered, rc 20 is no iscsid),
 * the kernel's tcp transport registered (`-m session` answers from sysfs even without one), and an
 * initiator name in /etc/iscsi/initiatorname.iscsi. Findings only: no decision.
 */
export async function checkInitiatorHost(deps: {
  fs: HostFs;
  runner: CommandRunner;
  iscsiadm: IscsiadmClient;
  timeoutMs: number;
}): Promise<InitiatorHostFindings> {
  const checks: InitiatorHostFindings['checks'] = [];
  const fixes: string[] = [];
  const parts: string[] = [];

  let installed = false;
  try {
    const version = await deps.iscsiadm.version();
    installed = true;
    checks.push({ name: 'iscsiadm present', ok: true, detail: `open-iscsi ${version}` });
    parts.push(`open-iscsi ${version}`);
  } catch (error) {
    const notInstalled = IscsiadmError.isIscsiadmError(error) && error.errorName === 'NOT_INSTALLED';
    checks.push({ name: 'iscsiadm present', ok: false, detail: notInstalled ? 'iscsiadm is not installed' : messageOf(error) });
    fixes.push(INITIATOR_FIXES.install);
  }

  if (installed) {
    // Run as is, not through the client: rc 20 is the answer here, not a failure to retry.
    const result = await deps.runner.run('iscsiadm', ['-m', 'session'], { timeoutMs: deps.timeoutMs, reject: false }).catch((error: unknown) => error);
    if (!isResult(result)) {
      checks.push({ name: 'iscsid running', ok: false, detail: `iscsiadm -m session could not run: ${messageOf(result)}` });
      fixes.push(INITIATOR_FIXES.iscsid);
    } else if (result.exitCode === 0 || result.exitCode === 21) {
      checks.push({ name: 'iscsid running', ok: true, detail: result.exitCode === 21 ? 'no active sessions' : `${countLines(result.stdout)} session(s)` });
      parts.push('iscsid running');
    } else {
      const detail =
        result.exitCode === 20 || result.exitCode === 18
          ? 'iscsiadm cannot reach iscsid'
          : `iscsiadm -m session failed (${result.timedOut ? 'timed out' : `exit ${result.exitCode}`})`;
      checks.push({ name: 'iscsid running', ok: false, detail });
      fixes.push(INITIATOR_FIXES.iscsid);
    }
  } else {
    checks.push({ name: 'iscsid running', ok: false, detail: 'not checked: iscsiadm is missing' });
  }

  const transport = await deps.fs.exists('/sys/class/iscsi_transport/tcp');
  checks.push({
    name: 'kernel iSCSI transport (iscsi_tcp)',
    ok: transport,
    detail: transport ? '/sys/class/iscsi_transport/tcp present' : 'no /sys/class/iscsi_transport/tcp: the iscsi_tcp module is not loaded',
  });
  if (!transport) fixes.push(INITIATOR_FIXES.transport);

  const initiator = await readInitiatorName(deps.fs);
  checks.push({ name: 'initiator name set', ok: initiator !== undefined, detail: initiator ?? `no InitiatorName= line in ${INITIATOR_NAME_FILE}` });
  if (initiator === undefined) fixes.push(INITIATOR_FIXES.initiator);

  return { checks, fixes, parts, initiator };
}

function isResult(value: unknown): value is CommandResult {
  return typeof value === 'object' && value !== null && typeof (value as CommandResult).exitCode === 'number' && typeof (value as CommandResult).stdout === 'string';
}

function countLines(text: string): number {
  return text.split('\n').filter((l) => l.trim() !== '').length;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
