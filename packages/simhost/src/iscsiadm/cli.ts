import { NODE_KEYS, updateParam, verifyParam } from '../idbm-record.js';
import type { NodeDb, NodeRecord } from '../node-db.js';
import { parsePortal } from '../portal-address.js';
import type { SimKernel, SimSessionState } from '../sim-kernel.js';
import type { TargetAccess } from '../target-access.js';
import type { ToolResult } from '../tool-protocol.js';

// What every iscsiadm mode shares: the parsed command line, the output with open-iscsi's
// stdout/stderr conventions, and record/session matching (usr/iscsiadm.c).

/** What the fake iscsiadm works on: the kernel model, the node database and the target side. */
export interface IscsiadmContext {
  kernel: SimKernel;
  db: NodeDb;
  targetAccess: TargetAccess;
  /** The initiator IQN of `/etc/iscsi/initiatorname.iscsi`. */
  initiatorName(): Promise<string>;
}

/** Records matched like __iscsi_match_session: empty fields match anything. */
export interface RecPattern {
  iqn: string;
  address: string;
  port: number;
  tpgt: number;
  iface: string;
}

/** What a run prints: log_info/printf on stdout, log_error/log_warning on stderr. */
export class Output {
  stdout = '';
  stderr = '';
  /** log_info / printf: stdout. */
  info(line: string): void {
    this.stdout += `${line}\n`;
  }
  /** log_error / log_warning: stderr with the program prefix. */
  error(line: string): void {
    this.stderr += `iscsiadm: ${line}\n`;
  }
  result(exitCode: number): ToolResult {
    return { stdout: this.stdout, stderr: this.stderr, exitCode };
  }
}

/** The discovery type `-t sendtargets`/`-t st` stands for. */
export const ST = 'sendtargets';

/** A parsed command line and what it works on. */
export interface Cli {
  out: Output;
  ctx: IscsiadmContext;
  portal: { address: string; port: number; tpgt: number } | undefined;
  targetname: string;
  ifaces: string[];
  op: number;
  params: Array<{ name: string; value: string }>;
  sid: number;
  infoLevel: number;
  type: string | undefined;
  doLogin: boolean;
  doLogout: boolean;
  doRescan: boolean;
  doShow: boolean;
  doStats: boolean;
  doDiscover: boolean;
  loginAll: string | undefined;
  logoutAll: string | undefined;
}

/** idbm_node_set_rec_from_param: verify every name, then set each; the error lines and code. */
export function setParams(out: Output, keys: typeof NODE_KEYS, values: Map<string, string>, params: Array<{ name: string; value: string }>): number {
  for (const p of params) {
    const why = verifyParam(keys, p.name);
    if (why) {
      out.error(why);
      return 7;
    }
  }
  for (const p of params) {
    const errors = updateParam(keys, values, p.name, p.value);
    if (errors.length > 0) {
      for (const e of errors) out.error(e);
      out.error(`Unknown parameter ${p.name}.`);
      return 7;
    }
  }
  return 0;
}

/** Whether a node record matches the pattern (empty fields match anything). */
export function matchRecord(pattern: RecPattern, r: NodeRecord): boolean {
  if (pattern.iqn !== '' && pattern.iqn !== r.iqn) return false;
  if (pattern.address !== '' && pattern.address !== r.address) return false;
  if (pattern.port !== -1 && pattern.port !== r.port) return false;
  if (pattern.iface !== '' && pattern.iface !== r.iface) return false;
  return true;
}

/** Whether a session matches the pattern (empty fields match anything). */
export function matchSession(pattern: RecPattern, s: SimSessionState): boolean {
  const p = parsePortal(s.portal);
  if (pattern.iqn !== '' && pattern.iqn !== s.iqn) return false;
  if (pattern.address !== '' && pattern.address !== p.address) return false;
  if (pattern.port !== -1 && pattern.port !== p.port) return false;
  if (pattern.iface !== '' && pattern.iface !== s.iface) return false;
  return true;
}

/** The kernel model's sessions made from this record. */
export function sessionsOfRecord(cli: Cli, r: NodeRecord): SimSessionState[] {
  return cli.ctx.kernel.findSessions({ iqn: r.iqn, portal: { address: r.address, port: r.port }, iface: r.iface });
}
