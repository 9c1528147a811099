import { connect } from 'node:net';
import { BerthError } from '@berth/core';
import { parsePortal } from '@berth/iscsi';

/**
 * The first portal that takes a TCP connection within `probeMs`, in order: qemu's login blocks
 * its whole main loop (every export of the daemon) while a portal does not answer, so a dead one
 * is found out here instead.
 */
export async function firstLivePortal(portals: readonly string[], probeMs: number, signal: AbortSignal): Promise<string> {
  const tried: string[] = [];
  for (const portal of portals) {
    signal.throwIfAborted();
    const { host, port } = parsePortal(portal);
    const live = await new Promise<boolean>((resolve) => {
      const socket = connect({ host, port, timeout: probeMs, signal });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('timeout', () => {
        socket.destroy();
        resolve(false);
      });
      socket.once('error', () => resolve(false));
    });
    if (live) return portal;
    tried.push(portal);
  }
  signal.throwIfAborted();
  throw new BerthError('TIMEOUT', `no portal of the target answers: ${tried.join(', ')}`, {
    hint: 'check that the target listens there and that this host can reach it (firewall, routes)',
    details: { portals: tried, reason: 'portal-unreachable' },
  });
}

/** Whether `portal` takes a TCP connection within `probeMs` (throws only when `signal` fired). */
export async function portalAnswers(portal: string, probeMs: number, signal: AbortSignal): Promise<boolean> {
  return firstLivePortal([portal], probeMs, signal).then(
    () => true,
    (error: unknown) => {
      if (signal.aborted) throw error;
      return false;
    },
  );
}
