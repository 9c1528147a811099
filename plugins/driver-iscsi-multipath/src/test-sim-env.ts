import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type ConnectionInfo, type Logger, type TransportDriver } from '@berth/core';
import type { CommandResult, CommandRunner, HostServices, RunOptions } from '@berth/host';
import { SimulatedHost, type ModelSan, type ModelTargetSpec, type SimulatedHostOptions } from '@berth/simhost';
import { createMultipathDriver, STATE_SUBDIR } from './multipath-driver.js';
import { AdvertisingTargetAccess } from './test-advertising-target-access.js';
import type { MultipathDriverOptionsInput } from './options.js';

/** The portals the test SAN answers on (the model SAN needs no network: they are names). */
export const PORTALS = ['127.0.0.1:3260', '127.0.0.2:3260', '127.0.0.3:3260', '127.0.0.4:3260'] as const;

/** A command the driver ran, as argv. */
export type Run = readonly string[];

/** One log line the driver wrote. */
export interface LogLine {
  level: 'debug' | 'info' | 'warn' | 'error';
  obj: Record<string, unknown>;
  msg: string | undefined;
}

/** A simulated host, a data dir and the driver on them; `dispose()` removes everything. */
export interface SimEnv {
  sim: SimulatedHost;
  /** The SAN behind the sessions (the simulator's model, or the advertising one). */
  san: Pick<ModelSan, 'addTarget' | 'targets' | 'setDiscoveryChap' | 'addLun'>;
  host: HostServices;
  dataDir: string;
  driver: TransportDriver;
  /** Every command the driver ran through its runner, in order. */
  runs: Run[];
  /** What the driver logged. */
  logs: LogLine[];
  /** A new driver instance on the same host and data dir (a restart of berth). */
  restart(options?: MultipathDriverOptionsInput): TransportDriver;
  /** `iscsiadm -m node` as a user would run it: the record lines (empty when none). */
  nodeRecords(): Promise<string[]>;
  /** `iscsiadm -m node -T IQN -p PORTAL` as key → value (undefined when there is no record). */
  nodeRecord(iqn: string, portal: string): Promise<Record<string, string> | undefined>;
  /** The persisted attach state of a volume, parsed, or undefined. */
  stateFile(volumeId: string): Promise<Record<string, unknown> | undefined>;
  /** How many `iscsiadm … --login` runs the driver made. */
  loginRuns(): number;
  dispose(): Promise<void>;
}

/** A logger that keeps every line (tests check what the user is told). */
export function recordingLogger(lines: LogLine[], bindings: Record<string, unknown> = {}): Logger {
  const at = (level: LogLine['level']) => (obj: Record<string, unknown>, msg?: string): void => {
    lines.push({ level, obj: { ...bindings, ...obj }, msg });
  };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: (more) => recordingLogger(lines, { ...bindings, ...more }) };
}

/** Start a simulated host with `targets` and an `iscsi-multipath` driver on it. */
export async function startSimEnv(
  options: {
    sim?: SimulatedHostOptions;
    driver?: MultipathDriverOptionsInput;
    targets?: ModelTargetSpec[];
    /** SendTargets lists every portal of a target (most arrays), not only the one asked (tgtd). */
    advertiseAll?: boolean;
  } = {},
): Promise<SimEnv> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'berth-driver-iscsi-mp-'));
  const access = options.advertiseAll === true ? new AdvertisingTargetAccess(path.join(dataDir, 'san')) : undefined;
  let sim: SimulatedHost | undefined;
  try {
    sim = await SimulatedHost.start({ deviceDelayMs: 20, ...(access === undefined ? {} : { targetAccess: access }), ...options.sim });
    const san: SimEnv['san'] = access?.model ?? sim.san;
    for (const target of options.targets ?? []) await san.addTarget(target);
    const base = sim.hostServices();
    const runs: Run[] = [];
    const logs: LogLine[] = [];
    const runner: CommandRunner = {
      run(file: string, args: readonly string[], runOptions?: RunOptions): Promise<CommandResult> {
        runs.push([file, ...args]);
        return base.runner.run(file, args, runOptions);
      },
    };
    const dir = dataDir;
    const make = (driverOptions: MultipathDriverOptionsInput): TransportDriver =>
      createMultipathDriver({ host: { ...base, runner }, dataDir: dir, options: driverOptions, logger: recordingLogger(logs) });
    const running = sim;
    return {
      sim: running,
      san,
      host: base,
      dataDir,
      driver: make(options.driver ?? {}),
      runs,
      logs,
      restart: (driverOptions) => make(driverOptions ?? options.driver ?? {}),
      async nodeRecords() {
        const result = await base.runner.run('iscsiadm', ['-m', 'node'], { reject: false, timeoutMs: 10_000 });
        return result.exitCode === 0 ? result.stdout.split('\n').filter((l) => l.trim() !== '') : [];
      },
      async nodeRecord(iqn, portal) {
        const result = await base.runner.run('iscsiadm', ['-m', 'node', '-T', iqn, '-p', portal], { reject: false, timeoutMs: 10_000 });
        if (result.exitCode !== 0) return undefined;
        const record: Record<string, string> = {};
        for (const line of result.stdout.split('\n')) {
          const match = /^(\S+) = (.*)$/.exec(line);
          if (match?.[1] !== undefined) record[match[1]] = match[2] ?? '';
        }
        return record;
      },
      async stateFile(volumeId) {
        const text = await readFile(path.join(dir, STATE_SUBDIR, `${volumeId}.json`), 'utf8').catch(() => undefined);
        return text === undefined ? undefined : (JSON.parse(text) as Record<string, unknown>);
      },
      loginRuns() {
        return runs.filter((r) => r[0] === 'iscsiadm' && r.includes('--login')).length;
      },
      async dispose() {
        try {
          await running.stop();
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
    };
  } catch (error) {
    await sim?.stop();
    await rm(dataDir, { recursive: true, force: true });
    throw error;
  }
}

/** A connection_info with os-brick's lists: LUN `lun` of `iqn` on every one of `portals`. */
export function listConnection(iqn: string, lun: number, portals: readonly string[], extra: Record<string, unknown> = {}): ConnectionInfo {
  return {
    driver_volume_type: 'iscsi',
    data: {
      target_portal: portals[0],
      target_iqn: iqn,
      target_lun: lun,
      target_portals: [...portals],
      target_iqns: portals.map(() => iqn),
      target_luns: portals.map(() => lun),
      ...extra,
    },
  } as ConnectionInfo;
}

/** A connection_info naming one portal only: the transport discovers the others (`advertise: 'first'`). */
export function discoveryConnection(iqn: string, lun: number, portal: string, extra: Record<string, unknown> = {}): ConnectionInfo {
  return { driver_volume_type: 'iscsi', data: { target_portal: portal, target_iqn: iqn, target_lun: lun, ...extra } } as ConnectionInfo;
}

/** A target of `lunCount` disk LUNs (1…n) of 8 MiB each on `portals`. */
export function targetSpec(iqn: string, portals: readonly string[], lunCount = 1, extra: Partial<ModelTargetSpec> = {}): ModelTargetSpec {
  const luns: ModelTargetSpec['luns'] = {};
  for (let lun = 1; lun <= lunCount; lun++) luns[lun] = { sizeBytes: 8 * 1024 * 1024 };
  return { iqn, portals: [...portals], luns, ...extra };
}

/** os-brick's scsi_wwn of a kernel wwid (`naa.6…` → `36…`). */
export function wwnOf(wwid: string): string {
  return wwid.startsWith('naa.') ? `3${wwid.slice(4)}` : wwid;
}

/** Whether a path under the simulated root exists. */
export async function existsUnder(env: SimEnv, hostPath: string): Promise<boolean> {
  return stat(env.host.fs.resolve(hostPath)).then(
    () => true,
    () => false,
  );
}
