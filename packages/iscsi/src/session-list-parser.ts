import { parsePortal, type PortalWithTag } from './portal.js';

/** One line of `iscsiadm -m session`. */
export interface SessionListEntry {
  /** The transport (`tcp`, `iser`): the SCSI host's proc_name without `iscsi_`. */
  transport: string;
  /** The session id (the S of `/sys/class/iscsi_session/sessionS`). */
  sid: number;
  /** The connection's persistent address and port, and the target portal group tag. */
  portal: PortalWithTag;
  iqn: string;
  /** True for `(flash)` sessions (made by the HBA's firmware, not by iscsid). */
  flash: boolean;
}

const LINE = /^(\S+): \[(\d+)\] (\S+),(-?\d+) (\S+)(?: \((flash|non-flash)\))?$/;

/** Parse `iscsiadm -m session`: `tcp: [SID] ADDR:PORT,TPGT IQN (non-flash)` per line. */
export function parseSessionList(stdout: string): SessionListEntry[] {
  const out: SessionListEntry[] = [];
  for (const raw of stdout.split('\n')) {
    const match = LINE.exec(raw.trim());
    if (!match) continue;
    const [, transport = '', sid = '', address = '', tag = '', iqn = '', kind] = match;
    let portal;
    try {
      portal = parsePortal(address);
    } catch {
      continue;
    }
    const tpgt = Number(tag) === 4294967295 ? -1 : Number(tag);
    out.push({ transport, sid: Number(sid), portal: { host: portal.host, port: portal.port, tpgt }, iqn, flash: kind === 'flash' });
  }
  return out;
}
