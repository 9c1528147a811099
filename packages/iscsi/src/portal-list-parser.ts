import { parsePortal, type PortalWithTag } from './portal.js';

/** One `ADDR:PORT,TPGT IQN` line of `iscsiadm -m node` or of a sendtargets discovery. */
export interface PortalTarget {
  iqn: string;
  portal: PortalWithTag;
}

const LINE = /^(\S+),(-?\d+)\s+(\S+)$/;

/**
 * Parse `-m node` and discovery output: one `ADDR:PORT,TPGT IQN` per line, IPv6 in brackets, an
 * unset tag printed as 4294967295 (read as -1). Lines of any other shape are skipped, as os-brick
 * skips them: iscsiadm's informational messages also go to stdout.
 */
export function parsePortalTargets(stdout: string): PortalTarget[] {
  const out: PortalTarget[] = [];
  for (const raw of stdout.split('\n')) {
    const match = LINE.exec(raw.trim());
    if (!match) continue;
    const [, address = '', tag = '', iqn = ''] = match;
    let portal;
    try {
      portal = parsePortal(address);
    } catch {
      continue;
    }
    const tpgt = Number(tag) === 4294967295 ? -1 : Number(tag);
    out.push({ iqn, portal: { host: portal.host, port: portal.port, tpgt } });
  }
  return out;
}
