import type { CheckResult } from '@berth/core';
import type { CommandResult, CommandRunner, HostFs } from '@berth/host';
import {
  FIND_MULTIPATHS_POLICIES,
  INITIATOR_NAME_FILE,
  IscsiadmError,
  readFindMultipaths,
  readInitiatorName,
  type IscsiadmClient,
  type MultipathClient,
} from '@berth/iscsi';

/** The fixes `check()` proposes, one per finding. */
export const FIX = {
  install: 'apt-get install -y open-iscsi',
  iscsid: 'start iscsid: systemctl start iscsid (or run `iscsid`)',
  transport: 'load the kernel initiator: modprobe iscsi_tcp (a kernel without it cannot log in: use `berth --simulate` to run on the simulated host instead)',
  initiator: `set this host's initiator name: echo "InitiatorName=$(iscsi-iname)" > ${INITIATOR_NAME_FILE} (the open-iscsi package does it on install), then restart iscsid`,
  multipathTools: 'install multipath-tools: apt-get install -y multipath-tools, then systemctl enable --now multipathd',
  multipathd: 'start multipathd: systemctl enable --now multipathd (until then attaches degrade to one path, or fail with enforce_multipath)',
} as const;

/** What berth does under each `find_multipaths` policy, for the check's detail line. */
function berthUnder(policy: string): string {
  switch (policy) {
    case 'strict':
    case 'yes':
    case 'on':
    case 'smart':
      return 'berth lists each volume\'s wwid with `multipath -a` and adds its paths with `multipathd add path`';
    default:
      return 'multipathd maps every path by itself; berth waits for the map';
  }
}

/**
 * Whether this host can connect iSCSI volumes over dm-multipath: the single-path checks
 * (iscsiadm installed, iscsid answering, the kernel's tcp transport, an initiator name), then
 * multipathd answering (`multipathd show status`) and the `find_multipaths` policy in effect (from
 * `multipath -t`, /etc/multipath.conf, or the default `strict`).
 */
export async function checkMultipathHost(deps: {
  fs: HostFs;
  runner: CommandRunner;
  iscsiadm: IscsiadmClient;
  multipath: MultipathClient;
  timeoutMs: number;
  enforceMultipath: boolean;
}): Promise<CheckResult> {
  const checks: NonNullable<CheckResult['checks']> = [];
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
      parts.push('iscsid running');
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

  // `iscsiadm -m session` answers from sysfs even without iscsid or a kernel initiator.
  const transport = await deps.fs.exists('/sys/class/iscsi_transport/tcp');
  checks.push({
    name: 'kernel iSCSI transport (iscsi_tcp)',
    ok: transport,
    detail: transport ? '/sys/class/iscsi_transport/tcp present' : 'no /sys/class/iscsi_transport/tcp: the iscsi_tcp module is not loaded',
  });
  if (!transport) fixes.push(FIX.transport);

  const initiator = await readInitiatorName(deps.fs);
  checks.push({ name: 'initiator name set', ok: initiator !== undefined, detail: initiator ?? `no InitiatorName= line in ${INITIATOR_NAME_FILE}` });
  if (initiator === undefined) fixes.push(FIX.initiator);

  const daemon = await deps.multipath.daemonState({ timeoutMs: deps.timeoutMs }).catch((error: unknown) => ({ state: 'not-running' as const, detail: messageOf(error) }));
  const degrade = deps.enforceMultipath ? 'attaches fail (enforce_multipath)' : 'attaches degrade to one path';
  if (daemon.state === 'running') {
    const paths = daemon.status.paths;
    checks.push({ name: 'multipathd running', ok: true, detail: paths === undefined ? 'multipathd answers' : `multipathd answers, ${paths} path(s)` });
    parts.push('multipathd running');
  } else {
    checks.push({ name: 'multipathd running', ok: false, detail: `${daemon.detail}; ${degrade}` });
    fixes.push(daemon.state === 'not-installed' ? FIX.multipathTools : FIX.multipathd);
  }

  if (daemon.state !== 'not-installed') {
    const policy = await readFindMultipaths({ client: deps.multipath, fs: deps.fs }, { timeoutMs: deps.timeoutMs }).catch(() => ({ value: 'strict', source: 'default' as const }));
    const meaning = FIND_MULTIPATHS_POLICIES[policy.value];
    checks.push({
      name: 'find_multipaths policy',
      ok: meaning !== undefined,
      detail: meaning === undefined
        ? `find_multipaths ${JSON.stringify(policy.value)} (from ${policy.source}) is not a value multipath-tools 0.9 knows`
        : `find_multipaths ${policy.value} (from ${policy.source}): ${meaning}; ${berthUnder(policy.value)}`,
    });
    if (meaning === undefined) fixes.push(`set find_multipaths to strict, yes, smart, greedy or no in the defaults section of /etc/multipath.conf, then systemctl reload multipathd`);
    else parts.push(`find_multipaths ${policy.value}`);
  }

  const failed = checks.filter((c) => !c.ok).map((c) => c.name);
  if (failed.length === 0) {
    return { ok: true, summary: `iscsi-multipath: ${parts.join(', ')}, initiator ${initiator ?? ''}`, checks };
  }
  return { ok: false, summary: `iscsi-multipath: not usable here (${failed.join(', ')}: no)`, checks, fix: fixes.join('; ') };
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
