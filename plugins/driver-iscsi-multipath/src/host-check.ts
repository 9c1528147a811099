import type { CheckResult } from '@berth/core';
import type { CommandRunner, HostFs } from '@berth/host';
import { checkInitiatorHost, FIND_MULTIPATHS_POLICIES, readFindMultipaths, type IscsiadmClient, type MultipathClient } from '@berth/iscsi';

/** The multipath fixes `check()` proposes (the initiator's come from the toolkit). */
export const FIX = {
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
  const { checks, fixes, parts, initiator } = await checkInitiatorHost(deps);

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

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
