import { OP } from '../iscsiadm-args.js';
import { RECORD_VERSION } from '../idbm-record.js';
import { formatPortal, parsePortal, samePortal } from '../portal-address.js';
import type { SimSessionState } from '../sim-kernel.js';
import type { ToolResult } from '../tool-protocol.js';
import { type RecPattern, type Cli } from './cli.js';
import { execNodeOp } from './node-mode.js';

// `iscsiadm -m session`: the flat list, the `-P 1/2/3` trees, and `-r SID` operations.

/** `-m session`: list, `-P N` trees, and `-r SID` with `--logout`/`--rescan`/record ops. */
export async function sessionMode(cli: Cli): Promise<ToolResult> {
  const { out, ctx } = cli;
  if (cli.sid >= 0) {
    const [s] = ctx.kernel.findSessions({ sid: cli.sid });
    if (!s) {
      out.error('could not read session targetname: 5');
      out.error(`Could not get session info for sid ${cli.sid}`);
      return out.result(22);
    }
    if (!cli.doLogout && !cli.doRescan && !cli.doStats && cli.op === 0 && cli.infoLevel > 0) {
      printSessionTree(cli, [s]);
      return out.result(0);
    }
    const p = parsePortal(s.portal);
    const pattern: RecPattern = { iqn: s.iqn, address: p.address, port: p.port, tpgt: s.tpgt, iface: s.iface };
    if (cli.op === OP.NEW) {
      cli.op = 0;
      cli.doLogin = true;
    }
    return execNodeOp(cli, pattern, s.sid);
  }
  if (cli.op === OP.NEW) {
    out.error("session mode: Operation 'new' only allowed with specific session IDs");
    return out.result(7);
  }
  if (cli.doLogout || cli.doRescan || cli.doStats) return execNodeOp(cli, undefined, undefined);
  const sessions = ctx.kernel.findSessions();
  if (sessions.length === 0) {
    out.error('No active sessions.');
    return out.result(21);
  }
  if (cli.infoLevel <= 0) {
    for (const s of sessions) {
      const p = parsePortal(s.portal);
      out.info(`tcp: [${s.sid}] ${formatPortal(p.address, p.port)},${s.tpgt} ${s.iqn} (non-flash)`);
    }
    return out.result(0);
  }
  if (cli.infoLevel > 3) {
    out.error(`Invalid info level ${cli.infoLevel}. Try 0 - 3.`);
    return out.result(7);
  }
  printSessionTree(cli, sessions);
  return out.result(0);
}

const CONN_STATE: Readonly<Record<string, string>> = { LOGGED_IN: 'LOGGED IN', FAILED: 'TRANSPORT WAIT', FREE: 'FREE' };
const ISCSID_STATE: Readonly<Record<string, string>> = { LOGGED_IN: 'NO CHANGE', FAILED: 'REOPEN', FREE: 'NO CHANGE' };

/** session_info_print_tree at -P 1, 2 or 3. */
export function printSessionTree(cli: Cli, sessions: SimSessionState[]): void {
  const { out } = cli;
  const level = cli.infoLevel;
  if (level >= 3) {
    out.info('iSCSI Transport Class version 2.0-870');
    out.info(`version ${RECORD_VERSION}`);
  }
  let prev: SimSessionState | undefined;
  for (const s of sessions) {
    const p = parsePortal(s.portal);
    if (!prev || prev.iqn !== s.iqn) {
      out.info(`Target: ${s.iqn} (non-flash)`);
      prev = undefined;
    }
    const prevPortal = prev ? parsePortal(prev.portal) : undefined;
    if (!prevPortal || !samePortal(prevPortal, p)) {
      out.info(`\tCurrent Portal: ${formatPortal(p.address, p.port)},${s.tpgt}`);
      out.info(`\tPersistent Portal: ${formatPortal(p.address, p.port)},${s.tpgt}`);
    } else {
      out.info('');
    }
    out.info('\t\t**********');
    out.info('\t\tInterface:');
    out.info('\t\t**********');
    out.info(`\t\tIface Name: ${s.iface}`);
    out.info('\t\tIface Transport: tcp');
    out.info(`\t\tIface Initiatorname: ${s.initiator}`);
    out.info('\t\tIface IPaddress: 127.0.0.1');
    out.info('\t\tIface HWaddress: <empty>');
    out.info('\t\tIface Netdev: <empty>');
    out.info(`\t\tSID: ${s.sid}`);
    out.info(`\t\tiSCSI Connection State: ${CONN_STATE[s.state] ?? 'Unknown'}`);
    out.info(`\t\tiSCSI Session State: ${s.state}`);
    out.info(`\t\tInternal iscsid Session State: ${ISCSID_STATE[s.state] ?? 'Unknown'}`);
    if (level >= 2) {
      out.info('\t\t*********');
      out.info('\t\tTimeouts:');
      out.info('\t\t*********');
      out.info('\t\tRecovery Timeout: 120');
      out.info('\t\tTarget Reset Timeout: 30');
      out.info('\t\tLUN Reset Timeout: 30');
      out.info('\t\tAbort Timeout: 15');
      out.info('\t\t*****');
      out.info('\t\tCHAP:');
      out.info('\t\t*****');
      out.info('\t\tusername: <empty>');
      out.info('\t\tpassword: ********');
      out.info('\t\tusername_in: <empty>');
      out.info('\t\tpassword_in: ********');
      out.info('\t\t************************');
      out.info('\t\tNegotiated iSCSI params:');
      out.info('\t\t************************');
      out.info('\t\tHeaderDigest: None');
      out.info('\t\tDataDigest: None');
      out.info('\t\tMaxRecvDataSegmentLength: 262144');
      out.info('\t\tMaxXmitDataSegmentLength: 8192');
      out.info('\t\tFirstBurstLength: 65536');
      out.info('\t\tMaxBurstLength: 262144');
      out.info('\t\tImmediateData: Yes');
      out.info('\t\tInitialR2T: No');
      out.info('\t\tMaxOutstandingR2T: 1');
    }
    if (level >= 3) {
      out.info('\t\t************************');
      out.info('\t\tAttached SCSI devices:');
      out.info('\t\t************************');
      out.stdout += `\t\tHost Number: ${s.host}\tState: running\n`;
      for (const l of s.luns) {
        out.info(`\t\tscsi${s.host} Channel 00 Id 0 Lun: ${l.lun}`);
        if (l.device) out.stdout += `\t\t\tAttached scsi disk ${l.device}\t\tState: ${l.state}\n`;
      }
    }
    prev = s;
  }
}
