import { getopt, MODES, OPS } from '../iscsiadm-args.js';
import { RECORD_VERSION } from '../idbm-record.js';
import { parsePortalArg } from '../portal-address.js';
import type { ToolResult } from '../tool-protocol.js';
import { Output, ST, type IscsiadmContext, type Cli } from './cli.js';
import { discoveryMode, discoverydbMode } from './discovery-mode.js';
import { hostMode } from './host-mode.js';
import { ifaceMode } from './iface-mode.js';
import { nodeMode } from './node-mode.js';
import { sessionMode } from './session-mode.js';

// iscsiadm's command line (getopt_long, per-mode option checks) and the dispatch to its modes.

/**
 * iscsiadm 2.1.8 for the simulated host: the same options, outputs and exit codes as open-iscsi's
 * (usr/iscsiadm.c), over the on-disk node database and the kernel model. iscsid is always
 * "running", so nothing is printed about reaching it.
 */
export async function runIscsiadm(argv: readonly string[], ctx: IscsiadmContext): Promise<ToolResult> {
  const out = new Output();
  const parsed = getopt(argv);
  if (!parsed.ok) {
    out.stderr += `${parsed.message}\nTry \`iscsiadm --help' for more information.\n`;
    return out.result(7);
  }
  let mode: string | undefined;
  let portal: { address: string; port: number; tpgt: number } | undefined;
  let targetname = '';
  const ifaces: string[] = [];
  let op = 0;
  const params: Array<{ name: string; value: string }> = [];
  let pendingName: string | undefined;
  let sid = -1;
  let infoLevel = -1;
  let type: string | undefined;
  let doLogin = false;
  let doLogout = false;
  let doRescan = false;
  let doShow = false;
  let doStats = false;
  let doDiscover = false;
  let loginAll: string | undefined;
  let logoutAll: string | undefined;

  for (const { ch, arg = '' } of parsed.options) {
    switch (ch) {
      case 'o': {
        const bit = OPS[arg];
        op |= bit ?? 0;
        if (op === 0) {
          out.error(`can not recognize operation: '${arg}'`);
          return out.result(7);
        }
        break;
      }
      case 'n':
        pendingName = arg;
        break;
      case 'v':
        if (pendingName !== undefined) params.push({ name: pendingName, value: arg });
        break;
      case 'r':
        if (!/^\d+$/.test(arg)) {
          out.error(`invalid sid '${arg}'`);
          return out.result(7);
        }
        sid = Number(arg);
        break;
      case 'P':
        infoLevel = Number.parseInt(arg, 10) || 0;
        break;
      case 'm': {
        const m = MODES[arg];
        if (!m) {
          out.error('mode -1 is not yet supported');
          return out.result(7);
        }
        for (const o of parsed.options) {
          if (m.allowed.includes(o.ch)) continue;
          if (o.ch === 'm' && m.skipM) continue;
          out.error(`${m.name} mode: option '-${o.ch}' is not allowed/supported`);
          return out.result(7);
        }
        mode = arg;
        break;
      }
      case 'p':
        portal = parsePortalArg(arg);
        break;
      case 'T':
        targetname = arg;
        break;
      case 'I':
        ifaces.push(arg);
        break;
      case 't':
        type = arg === 'sendtargets' || arg === 'st' ? ST : arg;
        break;
      case 'l':
        doLogin = true;
        break;
      case 'u':
        doLogout = true;
        break;
      case 'R':
        doRescan = true;
        break;
      case 'S':
        doShow = true;
        break;
      case 's':
        doStats = true;
        break;
      case 'D':
        doDiscover = true;
        break;
      case 'L':
        loginAll = arg;
        break;
      case 'U':
        logoutAll = arg;
        break;
      case 'V':
        out.info(`iscsiadm version ${RECORD_VERSION}`);
        return out.result(0);
      case 'h':
        out.info('iscsiadm -m discoverydb | discovery | node | session | iface | fw | host [options] (simulated open-iscsi 2.1.8)');
        return out.result(0);
      default:
        break;
    }
  }
  if (mode === undefined) {
    out.stderr += "Try `iscsiadm --help' for more information.\n";
    return out.result(7);
  }
  const cli: Cli = { out, ctx, portal, targetname, ifaces, op, params, sid, infoLevel, type, doLogin, doLogout, doRescan, doShow, doStats, doDiscover, loginAll, logoutAll };
  switch (mode) {
    case 'fw':
      out.error('Could not get list of targets from firmware. (err 21)');
      return out.result(21);
    case 'host':
      return hostMode(cli);
    case 'iface':
      return ifaceMode(cli);
    case 'discoverydb':
      return discoverydbMode(cli);
    case 'discovery':
      return discoveryMode(cli);
    case 'node':
      return nodeMode(cli);
    default:
      return sessionMode(cli);
  }
}
