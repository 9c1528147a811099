import type { CheckResult } from '@berth/core';
import type { CommandResult, CommandRunner, HostFs } from '@berth/host';
import { INITIATOR_NAME_FILE, IscsiadmError, readInitiatorName, type IscsiadmClient } from '@berth/iscsi';

/** The fixes `check()` proposes, one per finding. */
export const FIX = {
  install: 'apt-get install -y open-iscsi',
  iscsid: 'start iscsid: systemctl start iscsid (or run `iscsid`)',
  transport: 'load the kernel initiator: modprobe iscsi_tcp (a kernel without it cannot log in: use `berth --simulate` to run on the simulated host instead)',
  initiator: `set this host's initiator name: echo "InitiatorName=$(iscsi-iname)" > ${INITIATOR_NAME_FILE} (the open-iscsi package does it on install), then restart iscsid`,
} as const;

/**
 * Whether this host can use the iSCSI kernel initiator: iscsiadm installed (its version),
 * iscsid answering (`iscsiadm -m session`: rc 0 or 21 "No active sessions" mean it answered,
 * rc 20 means no iscsid), the kernel's tcp transport registered, and an initiator name in
 * /etc/iscsi/initiatorname.iscsi.
 */
export async function checkIscsiHost(
  deps: { fs: HostFs; runner: CommandRunner; iscsiadm: IscsiadmClient; timeoutMs: number },
): Promise<CheckResult> {
  const checks: NonNullable<CheckResult['checks']> = [];
  const fixes: string[] = [];

  let installed = false;
  try {
    const version = await deps.iscsiadm.version();
    installed = true;
    checks.push({ name: 'iscsiadm present', ok: true, detail: `open-iscsi ${version}` });
  } catch (error) {
    const notInstalled = IscsiadmError.isIscsiadmError(error) && error.errorName === 'NOT_INSTALLED';
    checks.push({ name: 'iscsiadm present', ok: false, detail: notInstalled ? 'iscsiadm is not installed' : messageOf(error) });
    fixes.push(FIX.install);
  }

  if (installed) {
    // Run as is, not through the client: rc 20 is the answer here, not a failure to retry.
    const result = await deps.runner.run('iscsiadm', ['-m', 'session'], { timeoutMs: deps.timeoutMs, reject: false }).catch((error: unknown) => error);
    if (!isResult(result)) {
      checks.push({ name: 'iscsid running', ok: false, detail: `iscsiadm -m session could not run: ${messageOf(result)}` });
      fixes.push(FIX.iscsid);
    } else if (result.exitCode === 0 || result.exitCode === 21) {
      checks.push({ name: 'iscsid running', ok: true, detail: result.exitCode === 21 ? 'no active sessions' : `${countLines(result.stdout)} session(s)` });
    } else {
      const detail =
        result.exitCode === 20 || result.exitCode === 18
          ? 'iscsiadm cannot reach iscsid'
          : `iscsiadm -m session failed (${result.timedOut ? 'timed out' : `exit ${result.exitCode}`})`;
      checks.push({ name: 'iscsid running', ok: false, detail });
      fixes.push(FIX.iscsid);
    }
  } else {
    checks.push({ name: 'iscsid running', ok: false, detail: 'not checked: iscsiadm is missing' });
  }

  // `iscsiadm -m session` answers from sysfs even without iscsid or a kernel initiator, so it
  // cannot tell a host that can log in: the tcp transport class must be registered too.
  const transport = await deps.fs.exists('/sys/class/iscsi_transport/tcp');
  checks.push({
    name: 'kernel iSCSI transport (iscsi_tcp)',
    ok: transport,
    detail: transport ? '/sys/class/iscsi_transport/tcp present' : 'no /sys/class/iscsi_transport/tcp: the iscsi_tcp module is not loaded',
  });
  if (!transport) fixes.push(FIX.transport);

  const initiator = await readInitiatorName(deps.fs);
  checks.push({
    name: 'initiator name set',
    ok: initiator !== undefined,
    detail: initiator ?? `no InitiatorName= line in ${INITIATOR_NAME_FILE}`,
  });
  if (initiator === undefined) fixes.push(FIX.initiator);

  const failed = checks.filter((c) => !c.ok).map((c) => c.name);
  if (failed.length === 0) {
    const version = checks[0]?.detail ?? '';
    return { ok: true, summary: `iscsi: ${version}, iscsid running, initiator ${initiator ?? ''}`, checks };
  }
  return { ok: false, summary: `iscsi: not usable here (${failed.join(', ')}: no)`, checks, fix: fixes.join('; ') };
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
