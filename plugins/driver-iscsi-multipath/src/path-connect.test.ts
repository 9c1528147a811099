import { silentLogger } from '@berth/core';
import { toPortal, type LunConnectOptions, type LunLifecycle } from '@berth/iscsi';
import { describe, expect, it } from 'vitest';
import type { PathTarget } from './multipath-connection.js';
import type { MultipathContext } from './multipath-context.js';
import { zMultipathDriverOptions } from './options.js';
import { connectPaths } from './path-connect.js';

const IQN = 'iqn.2026-01.test.berth:grace';

function pathTarget(portalText: string): PathTarget {
  return { iqn: IQN, portal: toPortal(portalText), portalText, lun: 1, kernelLun: 1 };
}

/**
 * A lifecycle whose logins report the given times (not the clock's): a healthy path reports its
 * login and is up; a dead one (`undefined`) waits until it is cut. What the grace is computed
 * from is then exact, whatever the machine's load.
 */
function fakeContext(loginMs: Array<number | undefined>, stragglerGraceMs?: number): MultipathContext {
  const portals = loginMs.map((_, i) => `127.0.0.${i + 1}:3260`);
  const progress = () => ({ createdRecord: false, loggedIn: true, registered: true, scanned: false });
  const lifecycle = {
    async connect(target: PathTarget, options: LunConnectOptions) {
      const i = portals.indexOf(target.portalText);
      options.onLogin?.();
      const ms = loginMs[i];
      if (ms === undefined) {
        const error = await new Promise<unknown>((resolve) => options.cut?.addEventListener('abort', () => resolve(options.cut?.reason), { once: true }));
        options.onFailed?.(error);
        throw error;
      }
      // The healthy logins end one after another, in the order given, well before any cut (≥ 250 ms).
      for (let turn = 0; turn <= i; turn++) await new Promise((resolve) => setImmediate(resolve));
      options.onSession?.(ms);
      return { session: {}, device: { name: `sd${'abcd'[i]}`, sid: i + 1, hctl: { host: i, channel: 0, target: 0, lun: 1 } }, progress: progress() };
    },
    async release() {},
  } as unknown as LunLifecycle;
  const options = zMultipathDriverOptions.parse(stragglerGraceMs === undefined ? {} : { stragglerGraceMs });
  return { lifecycle, options, logger: silentLogger } as unknown as MultipathContext;
}

async function connect(loginMs: Array<number | undefined>, stragglerGraceMs?: number) {
  const ctx = fakeContext(loginMs, stragglerGraceMs);
  const targets = loginMs.map((_, i) => pathTarget(`127.0.0.${i + 1}:3260`));
  const connected = await connectPaths(ctx, targets, undefined, { signal: AbortSignal.timeout(30_000), degraded: false, byDiscovery: new Set() });
  await connected.stragglersUndone;
  return connected;
}

describe('connectPaths: the grace for a straggler', () => {
  it('cuts a dead login at the slowest healthy login plus one turn per open path and half, at least 250 ms, when shorter than the forecast', async () => {
    // The first session (100 ms, 3 other logins in flight) forecasts 100 + 100 × (4 × 1.5 − 1) = 600 ms.
    // All three healthy logins done by 300 ms, one path open: 300 + max(250, 100 × 1.5) = 550 ms.
    let connected = await connect([100, 200, 300, undefined]);
    expect(connected.outcomes.map((o) => o.status)).toEqual(['up', 'up', 'up', 'failed']);
    expect(connected.graceMs).toBe(250);
    expect(String(connected.outcomes[3]?.error?.message)).toMatch(/did not log in within 550 ms.*stragglerGraceMs 250 ms/);

    // Done by 120 ms: 120 + max(250, 40 × 1.5) = 370 ms.
    connected = await connect([100, 110, 120, undefined]);
    expect(connected.graceMs).toBe(250);
    expect(String(connected.outcomes[3]?.error?.message)).toMatch(/did not log in within 370 ms/);

    // Slow healthy logins: 900 + max(250, 300 × 1.5) = 1350 ms, below the forecast 300 × 6 = 1800 ms.
    connected = await connect([300, 600, 900, undefined]);
    expect(String(connected.outcomes[3]?.error?.message)).toMatch(/did not log in within 1350 ms.*stragglerGraceMs 450 ms/);
  });

  it('keeps the forecast when it is the shorter bound', async () => {
    // The first session (100 ms, 2 other logins in flight) forecasts 100 + 100 × (3 × 1.5 − 1) = 450 ms;
    // a second healthy login reported at 1000 ms would allow 1000 + 500 × 1.5 = 1750 ms: the forecast stays.
    let connected = await connect([100, 1_000, undefined]);
    expect(connected.outcomes.map((o) => o.status)).toEqual(['up', 'up', 'failed']);
    expect(String(connected.outcomes[2]?.error?.message)).toMatch(/did not log in within 450 ms/);

    // One login that ended says no more than its forecast: two dead paths of three are cut at 450 ms.
    connected = await connect([100, undefined, undefined]);
    expect(connected.outcomes.map((o) => o.status)).toEqual(['up', 'failed', 'failed']);
    expect(String(connected.outcomes[1]?.error?.message)).toMatch(/did not log in within 450 ms/);

    // Two dead of four, two logins done by 120 ms, two paths open: 120 + max(250, 60 × 2 × 1.5) = 370 ms.
    connected = await connect([100, 120, undefined, undefined]);
    expect(connected.outcomes.map((o) => o.status)).toEqual(['up', 'up', 'failed', 'failed']);
    expect(String(connected.outcomes[3]?.error?.message)).toMatch(/did not log in within 370 ms/);
  });

  it('keeps a configured stragglerGraceMs as it is', async () => {
    const connected = await connect([100, 110, 120, undefined], 400);
    expect(connected.graceMs).toBe(400);
    expect(String(connected.outcomes[3]?.error?.message)).toMatch(/did not log in within 500 ms/);
  });

  it('cuts nobody when every path logs in', async () => {
    const connected = await connect([100, 900, 2_000]);
    expect(connected.outcomes.map((o) => o.status)).toEqual(['up', 'up', 'up']);
    expect(connected.graceMs).toBeUndefined();
  });
});
