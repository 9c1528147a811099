import type { CheckResult } from '@berth/core';
import type { CommandRunner, HostFs } from '@berth/host';
import { checkInitiatorHost, type IscsiadmClient } from '@berth/iscsi';

/**
 * Whether this host can use the iSCSI kernel initiator (the toolkit's initiator checks: iscsiadm,
 * iscsid, the kernel's tcp transport, an initiator name), as one line for `berth doctor`.
 */
export async function checkIscsiHost(
  deps: { fs: HostFs; runner: CommandRunner; iscsiadm: IscsiadmClient; timeoutMs: number },
): Promise<CheckResult> {
  const { checks, fixes, parts, initiator } = await checkInitiatorHost(deps);
  const failed = checks.filter((c) => !c.ok).map((c) => c.name);
  if (failed.length === 0) return { ok: true, summary: `iscsi: ${parts.join(', ')}, initiator ${initiator ?? ''}`, checks };
  return { ok: false, summary: `iscsi: not usable here (${failed.join(', ')}: no)`, checks, fix: fixes.join('; ') };
}
