import type { ToolResult } from '../tool-protocol.js';
import { type Cli } from './cli.js';

// `iscsiadm -m host`: the iSCSI hosts the kernel model has.

/** `-m host`: one line per iSCSI host of the kernel model. */
export async function hostMode(cli: Cli): Promise<ToolResult> {
  const { out, ctx } = cli;
  const sessions = ctx.kernel.findSessions();
  if (sessions.length === 0) {
    out.error('No iSCSI hosts.');
    return out.result(21);
  }
  for (const s of [...sessions].sort((a, b) => a.host - b.host)) out.info(`tcp: [${s.host}] 127.0.0.1,[<empty>],<empty> ${s.initiator}`);
  return out.result(0);
}
