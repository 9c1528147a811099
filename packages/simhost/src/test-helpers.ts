import type { CommandResult, HostServices } from '@berth/host';
import type { SimulatedHost } from './simulated-host.js';

/** The target the fixtures were recorded against, and a second one. */
export const VOL1 = 'iqn.2026-01.test.berth:vol1';
export const VOL2 = 'iqn.2026-01.test.berth:vol2';
export const PORTAL = '127.0.0.1:3260';
export const PORTAL2 = '127.0.0.2:3260';

/** Run the simulated host's iscsiadm as a driver would: through the runner, never rejecting. */
export function iscsiadm(services: HostServices, ...args: string[]): Promise<CommandResult> {
  return services.runner.run('iscsiadm', args, { reject: false, timeoutMs: 30_000 });
}

/** `-m node -T IQN -p PORTAL` */
export function node(iqn: string, portal = PORTAL): string[] {
  return ['-m', 'node', '-T', iqn, '-p', portal];
}

/** Make a node record with scan=manual and log in (what a driver does); returns the session. */
export async function loginManual(sim: SimulatedHost, services: HostServices, iqn: string, portal = PORTAL): Promise<{ sid: number; host: number }> {
  const steps = [
    [...node(iqn, portal), '--interface', 'default', '--op', 'new'],
    [...node(iqn, portal), '--op', 'update', '-n', 'node.session.scan', '-v', 'manual'],
    [...node(iqn, portal), '--login'],
  ];
  for (const args of steps) {
    const r = await iscsiadm(services, ...args);
    if (r.exitCode !== 0) throw new Error(`iscsiadm ${args.join(' ')} → ${r.exitCode}: ${r.stderr}`);
  }
  const state = await sim.state();
  const s = state.sessions.find((x) => x.iqn === iqn && x.portal === portal);
  if (!s) throw new Error(`no session to ${iqn} after login`);
  return { sid: s.sid, host: s.host };
}
