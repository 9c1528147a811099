import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { silentLogger, type ConnectionInfo, type TransportDriver } from '@berth/core';
import type { CommandResult, CommandRunner, RunOptions } from '@berth/host';
import { createMultipathDriver } from '@berth/driver-iscsi-multipath';
import { ModelTargetAccess, SimulatedHost, type LoginAuth, type TargetAccess } from '@berth/simhost';
import { printTable, summarize } from './stats.js';

const IQN = 'iqn.2026-01.bench.berth:multipath';
const PORTALS = ['127.0.0.1:3260', '127.0.0.2:3260', '127.0.0.3:3260', '127.0.0.4:3260'];

/** One scenario: how many portals, how the transport learns them, and what is wrong with one. */
interface Scenario {
  name: string;
  portals: number;
  /** `lists`: target_portals/iqns/luns; `discovery`: only target_portal, SendTargets finds the rest. */
  from: 'lists' | 'discovery';
  /** The last portal is `dead` (logins hang for a minute) or `slow` (its disk appears 500 ms late). */
  fault?: 'dead' | 'slow';
}

/** The dead-portal scenario's name (its connect is compared with the healthy one). */
const DEAD_PORTAL = '4 portals, one unreachable (iscsid gives up after the record\'s login_timeout x retry_max)';

const SCENARIOS: Scenario[] = [
  { name: '2 portals', portals: 2, from: 'lists' },
  { name: '4 portals', portals: 4, from: 'lists' },
  { name: '2 portals, discovered', portals: 2, from: 'discovery' },
  { name: '4 portals, discovered', portals: 4, from: 'discovery' },
  { name: '4 portals, one slow (disk +500 ms)', portals: 4, from: 'lists', fault: 'slow' },
  { name: DEAD_PORTAL, portals: 4, from: 'lists', fault: 'dead' },
];

/**
 * The transport's bound on one portal's login (its default is 15 s). Raised here so a loaded
 * machine does not fail healthy logins; a dead portal is given up at the grace window after the
 * first login, long before this.
 */
const PORTAL_TIMEOUT_MS = 30_000;

/**
 * Multipath attach + detach cycles of the `iscsi-multipath` transport on the simulated host (its
 * kernel, open-iscsi and dm-multipath models, a model SAN on 2 or 4 portals), with one portal slow
 * or unreachable: the time of each step the transport reports (`multipathd` check, `discovery`,
 * parallel `paths` logins + scans, `map` formation, `ready` check) and of the whole connect and
 * disconnect. A fake tool run costs about what a real one does (the simulator's compiled client),
 * and a dead portal's login costs what iscsid's node-record timeouts make it cost; the transport
 * gives it up at the grace window after the first login. The last table is the ratio the target
 * is about (dead portal <= 1.1x healthy).
 */
export async function benchAttachMultipath(iterations = 5): Promise<void> {
  const connectP50 = new Map<string, number>();
  for (const scenario of SCENARIOS) connectP50.set(scenario.name, await runScenario(scenario, iterations));
  const healthy = connectP50.get('4 portals') ?? Number.NaN;
  printTable('ratios in this run (connect p50 against the healthy 4-portal connect)', ['scenario', 'ratio', 'target'], [
    ['4 portals, one slow (disk +500 ms)', (connectP50.get('4 portals, one slow (disk +500 ms)') ?? Number.NaN) / healthy, '-'],
    ['4 portals, one unreachable', (connectP50.get(DEAD_PORTAL) ?? Number.NaN) / healthy, '<= 1.1'],
  ]);
}

async function runScenario(scenario: Scenario, iterations: number): Promise<number> {
  const portals = PORTALS.slice(0, scenario.portals);
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-mp-'));
  // Discovery needs a SAN whose SendTargets lists every portal (tgtd lists only the one asked).
  const model = new ModelTargetAccess({ workDir: path.join(dataDir, 'san') });
  const sim = await SimulatedHost.start({ deviceDelayMs: 20, targetAccess: advertisingAll(model) });
  try {
    await model.addTarget({ iqn: IQN, portals, luns: { 1: { sizeBytes: 64 * 1024 * 1024 } } });
    const last = portals[portals.length - 1] ?? PORTALS[0]!;
    // Nothing answers there: each login attempt runs into the node record's login timeout.
    if (scenario.fault === 'dead') await sim.faults.unreachablePortal(last);
    if (scenario.fault === 'slow') await sim.faults.slowDevice({ portal: last, extraDelayMs: 500 });
    const base = sim.hostServices();
    let commands = 0;
    const runner: CommandRunner = {
      run(file: string, args: readonly string[], options?: RunOptions): Promise<CommandResult> {
        commands += 1;
        return base.runner.run(file, args, options);
      },
    };
    const driver: TransportDriver = createMultipathDriver({
      host: { ...base, runner },
      dataDir,
      options: { portalTimeoutMs: PORTAL_TIMEOUT_MS },
      logger: silentLogger,
    });
    const connection: ConnectionInfo =
      scenario.from === 'lists'
        ? {
            driver_volume_type: 'iscsi',
            data: { target_portal: portals[0], target_iqn: IQN, target_lun: 1, target_portals: portals, target_iqns: portals.map(() => IQN), target_luns: portals.map(() => 1) },
          }
        : { driver_volume_type: 'iscsi', data: { target_portal: portals[0], target_iqn: IQN, target_lun: 1 } };

    const steps: Record<string, number[]> = {};
    const connectTotal: number[] = [];
    const disconnectTotal: number[] = [];
    const connectCommands: number[] = [];
    const disconnectCommands: number[] = [];
    const activePaths: number[] = [];
    for (let i = 0; i < iterations; i++) {
      commands = 0;
      let t = performance.now();
      const device = await driver.connect(connection, { signal: AbortSignal.timeout(120_000) });
      connectTotal.push(performance.now() - t);
      connectCommands.push(commands);
      activePaths.push(device.paths?.filter((p) => p.state === 'active').length ?? 0);
      for (const [step, ms] of Object.entries((device.meta?.['timings'] ?? {}) as Record<string, number>)) (steps[step] ??= []).push(ms);
      commands = 0;
      t = performance.now();
      await driver.disconnect(connection, device, { force: false, signal: AbortSignal.timeout(120_000) });
      disconnectTotal.push(performance.now() - t);
      disconnectCommands.push(commands);
    }
    const row = (name: string, samples: number[]): Array<string | number> => {
      const s = summarize(samples);
      return [name, s.p50, s.p90, s.max];
    };
    printTable(
      `multipath attach, ${scenario.name}, ${iterations} cycles (ms; ${summarize(activePaths).p50} active path(s), ` +
        `${summarize(connectCommands).p50} commands per connect, ${summarize(disconnectCommands).p50} per disconnect)`,
      ['step', 'p50', 'p90', 'max'],
      [
        ...Object.entries(steps).map(([k, v]) => row(`connect: ${k}`, v)),
        row('connect (whole, as the caller sees it)', connectTotal),
        row('disconnect (whole)', disconnectTotal),
      ],
    );
    return summarize(connectTotal).p50;
  } finally {
    await sim.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

/** `model`, with SendTargets listing every portal of each target it returns, as most arrays do. */
function advertisingAll(model: ModelTargetAccess): TargetAccess {
  return {
    login: (request) => model.login(request),
    async discover(portal: string, initiator: string, auth?: LoginAuth) {
      const answer = await model.discover(portal, initiator, auth);
      if (!answer.ok) return answer;
      const targets = await model.targets();
      return {
        ok: true as const,
        targets: answer.targets.flatMap((found) => (targets.find((t) => t.iqn === found.iqn)?.portals ?? [found.portal]).map((p) => ({ ...found, portal: p }))),
      };
    },
    close: () => model.close(),
  };
}
