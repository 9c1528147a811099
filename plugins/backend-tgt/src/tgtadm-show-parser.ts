import { parsePortal, formatPortal } from '@berth/iscsi';

/** One I_T nexus (a session) on a target. */
export interface TgtNexus {
  id: number;
  /** The initiator's IQN. */
  initiator: string;
  /** The initiator's address of each connection. */
  addresses: string[];
}

/** One logical unit of a target. */
export interface TgtLun {
  lun: number;
  /** `controller` (LUN 0, always there) or `disk`. */
  type: string;
  /** The size as tgtadm prints it: whole megabytes (10^6 bytes), rounded down. */
  sizeMb: number;
  /** `rdwr`, `null`, ... */
  backingStoreType: string;
  /** The backing file; null for LUN 0 (`None`). */
  backingStorePath: string | null;
  online: boolean;
  /** `SCSI ID` (tgtd's `scsi_id`: `IET     00010001` by default, or what berth set); absent when not printed. */
  scsiId?: string;
}

/** A CHAP account bound to a target. */
export interface TgtBoundAccount {
  user: string;
  /** True for the target's own (mutual CHAP) account. */
  outgoing: boolean;
}

/** One target of `tgtadm --op show --mode target`. */
export interface TgtTarget {
  tid: number;
  iqn: string;
  /** `ready` or `offline`. */
  state: string;
  nexuses: TgtNexus[];
  luns: TgtLun[];
  accounts: TgtBoundAccount[];
  /** ACL entries: `ALL`, addresses, and initiator names, in tgtd's order. */
  acls: string[];
}

type Section = 'system' | 'nexus' | 'lun' | 'account' | 'acl' | undefined;

const SECTIONS: Record<string, Section> = {
  'System information:': 'system',
  'I_T nexus information:': 'nexus',
  'LUN information:': 'lun',
  'Account information:': 'account',
  'ACL information:': 'acl',
};

function indentOf(line: string): number {
  return line.length - line.trimStart().length;
}

/**
 * Parse the full target listing (`tgtadm --lld iscsi --op show --mode target`, no `--tid`: with
 * a tid tgtadm prints the target's iSCSI parameters instead). Empty output means no targets.
 */
export function parseTargetList(stdout: string): TgtTarget[] {
  const targets: TgtTarget[] = [];
  let target: TgtTarget | undefined;
  let section: Section;
  let nexus: TgtNexus | undefined;
  let lun: TgtLun | undefined;

  for (const raw of stdout.split('\n')) {
    if (raw.trim() === '') continue;
    const indent = indentOf(raw);
    const line = raw.trim();
    if (indent === 0) {
      const head = /^Target (\d+): (.+)$/.exec(line);
      if (!head) throw new Error(`unexpected line in the tgtadm target list: ${JSON.stringify(raw)}`);
      target = { tid: Number(head[1]), iqn: head[2] ?? '', state: '', nexuses: [], luns: [], accounts: [], acls: [] };
      targets.push(target);
      section = undefined;
      continue;
    }
    if (!target) throw new Error(`tgtadm target list does not start with a target: ${JSON.stringify(raw)}`);
    if (indent === 4) {
      section = SECTIONS[line];
      nexus = undefined;
      lun = undefined;
      continue;
    }
    switch (section) {
      case 'system': {
        const state = /^State: (.*)$/.exec(line);
        if (state) target.state = state[1] ?? '';
        break;
      }
      case 'nexus': {
        const id = /^I_T nexus: (\d+)$/.exec(line);
        if (id) {
          nexus = { id: Number(id[1]), initiator: '', addresses: [] };
          target.nexuses.push(nexus);
          break;
        }
        // `Initiator: <iqn> alias: <alias>`: an IQN holds no spaces, so the first word is it.
        const initiator = /^Initiator: (\S+)/.exec(line);
        if (initiator && nexus) nexus.initiator = initiator[1] ?? '';
        const address = /^IP Address: (.+)$/.exec(line);
        if (address && nexus) nexus.addresses.push(address[1] ?? '');
        break;
      }
      case 'lun': {
        const number = /^LUN: (\d+)$/.exec(line);
        if (number) {
          lun = { lun: Number(number[1]), type: '', sizeMb: 0, backingStoreType: '', backingStorePath: null, online: false };
          target.luns.push(lun);
          break;
        }
        if (!lun) break;
        const colon = line.indexOf(':');
        const key = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + 1).trim();
        if (key === 'Type') lun.type = value;
        else if (key === 'Size') lun.sizeMb = Number(/^(\d+) MB/.exec(value)?.[1] ?? 0);
        else if (key === 'Online') lun.online = value === 'Yes';
        else if (key === 'Backing store type') lun.backingStoreType = value;
        else if (key === 'Backing store path') lun.backingStorePath = value === 'None' ? null : value;
        else if (key === 'SCSI ID') lun.scsiId = value;
        break;
      }
      case 'account': {
        const outgoing = / \(outgoing\)$/.test(line);
        target.accounts.push({ user: outgoing ? line.slice(0, -' (outgoing)'.length) : line, outgoing });
        break;
      }
      case 'acl':
        target.acls.push(line);
        break;
      default:
        break;
    }
  }
  return targets;
}

/** Parse `tgtadm --op show --mode portal` (`Portal: 127.0.0.1:3260,1` lines) into `address:port` texts. */
export function parsePortalList(stdout: string): string[] {
  const portals: string[] = [];
  for (const line of stdout.split('\n')) {
    const match = /^Portal: (.+)$/.exec(line.trim());
    if (!match) continue;
    const { host, port } = parsePortal(match[1] ?? '');
    portals.push(formatPortal({ host, port }));
  }
  return portals;
}

/** Parse `tgtadm --op show --mode account` (`Account list:` and one indented name per line). */
export function parseAccountList(stdout: string): string[] {
  return stdout
    .split('\n')
    .filter((line) => /^\s+\S/.test(line))
    .map((line) => line.trim());
}

/** Parse the system state line of `tgtadm --op show --mode sys` (`ready` when tgtd is up). */
export function parseSystemState(stdout: string): string | undefined {
  return /^\s+State: (\S+)/m.exec(stdout)?.[1];
}
