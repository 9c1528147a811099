import type { HostFs } from '@berth/host';

/** Where open-iscsi keeps this host's initiator name. */
export const INITIATOR_NAME_FILE = '/etc/iscsi/initiatorname.iscsi';

/**
 * Parse `/etc/iscsi/initiatorname.iscsi` as iscsid reads it (usr/iscsi_util.c): the first line
 * that holds `InitiatorName` with no `#` before it; the value is what follows the `=`, trimmed.
 * `undefined` when there is none (a fresh Debian install holds only `GenerateName=yes` until the
 * package's postinst has run).
 */
export function parseInitiatorName(text: string): string | undefined {
  for (const line of text.split('\n')) {
    const at = line.indexOf('InitiatorName');
    if (at < 0) continue;
    const comment = line.indexOf('#');
    if (comment >= 0 && comment < at) continue;
    const eq = line.indexOf('=', at);
    if (eq < 0) continue;
    const value = line.slice(eq + 1).trim();
    if (value !== '') return value;
  }
  return undefined;
}

/** This host's initiator name, read under the host root; `undefined` when unset or missing. */
export async function readInitiatorName(fs: HostFs, file = INITIATOR_NAME_FILE): Promise<string | undefined> {
  const text = await fs.readFileIfExists(file);
  return text === undefined ? undefined : parseInitiatorName(text);
}
