import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { silentLogger, type ConnectionInfo, type TransportDriver } from '@berth/core';
import { CommandError, type CommandResult, type CommandRunner, type HostServices, type RunOptions } from '@berth/host';
import { SimulatedHost, type ModelTargetSpec, type SimulatedHostOptions } from '@berth/simhost';
import { createIscsiDriver, STATE_SUBDIR } from './iscsi-driver.js';
import type { IscsiDriverOptionsInput } from './options.js';

/** The portal every test target answers on. */
export const PORTAL = '127.0.0.1:3260';

/** A command the driver ran, as argv. */
export type Run = readonly string[];

/** Makes a run fail as the tool would (return a result) or lets it through (`undefined`). */
export type RunFault = (file: string, args: readonly string[]) => Partial<CommandResult> | undefined;

/** A simulated host, a data dir and the driver on them; `dispose()` removes everything. */
export interface SimEnv {
  sim: SimulatedHost;
  host: HostServices;
  dataDir: string;
  driver: TransportDriver;
  /** Every command the driver ran through its runner, in order. */
  runs: Run[];
  /** Set to make chosen commands fail (a tool failing, which the simulator cannot inject). */
  fault: RunFault | undefined;
  /** A new driver instance on the same host and data dir (a restart of berth). */
  restart(options?: IscsiDriverOptionsInput): TransportDriver;
  /** `iscsiadm -m node` as a user would run it: the record lines (empty when none). */
  nodeRecords(): Promise<string[]>;
  /** `iscsiadm -m node -T IQN -p PORTAL` as key → value (undefined when there is no record). */
  nodeRecord(iqn: string): Promise<Record<string, string> | undefined>;
  /** The persisted attach state file of a volume, or undefined. */
  stateFile(volumeId: string): Promise<string | undefined>;
  /** How many `iscsiadm … --login` runs the driver made. */
  logins(): number;
  dispose(): Promise<void>;
}

/** Start a simulated host and an `iscsi` driver on it. */
export async function startSimEnv(
  options: { sim?: SimulatedHostOptions; driver?: IscsiDriverOptionsInput; targets?: ModelTargetSpec[] } = {},
): Promise<SimEnv> {
  const sim = await SimulatedHost.start({ deviceDelayMs: 20, ...options.sim });
  let dataDir: string | undefined;
  try {
    dataDir = await mkdtemp(path.join(tmpdir(), 'berth-driver-iscsi-'));
    for (const target of options.targets ?? []) await sim.san.addTarget(target);
    const base = sim.hostServices();
    const runs: Run[] = [];
    let fault: RunFault | undefined;
    const runner: CommandRunner = {
      async run(file: string, args: readonly string[], runOptions?: RunOptions): Promise<CommandResult> {
        runs.push([file, ...args]);
        const injected = fault?.(file, args);
        if (injected === undefined) return base.runner.run(file, args, runOptions);
        const result: CommandResult = {
          command: [file, ...args].join(' '),
          exitCode: 1,
          stdout: '',
          stderr: '',
          durationMs: 0,
          timedOut: false,
          aborted: false,
          ...injected,
        };
        if (runOptions?.reject === false) return result;
        throw new CommandError(result);
      },
    };
    const dir = dataDir;
    const make = (driverOptions: IscsiDriverOptionsInput): TransportDriver =>
      createIscsiDriver({ host: { ...base, runner }, dataDir: dir, options: driverOptions, logger: silentLogger });
    return {
      sim,
      host: base,
      dataDir,
      driver: make(options.driver ?? {}),
      runs,
      get fault() {
        return fault;
      },
      set fault(value) {
        fault = value;
      },
      restart: (driverOptions) => make(driverOptions ?? options.driver ?? {}),
      async nodeRecords() {
        const result = await base.runner.run('iscsiadm', ['-m', 'node'], { reject: false, timeoutMs: 10_000 });
        return result.exitCode === 0 ? result.stdout.split('\n').filter((l) => l.trim() !== '') : [];
      },
      async nodeRecord(iqn) {
        const result = await base.runner.run('iscsiadm', ['-m', 'node', '-T', iqn, '-p', PORTAL], { reject: false, timeoutMs: 10_000 });
        if (result.exitCode !== 0) return undefined;
        const record: Record<string, string> = {};
        for (const line of result.stdout.split('\n')) {
          const match = /^(\S+) = (.*)$/.exec(line);
          if (match?.[1] !== undefined) record[match[1]] = match[2] ?? '';
        }
        return record;
      },
      async stateFile(volumeId) {
        return readFile(path.join(dir, STATE_SUBDIR, `${volumeId}.json`), 'utf8').catch(() => undefined);
      },
      logins() {
        return runs.filter((r) => r[0] === 'iscsiadm' && r.includes('--login')).length;
      },
      async dispose() {
        try {
          await sim.stop();
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
    };
  } catch (error) {
    await sim.stop();
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
    throw error;
  }
}

/** An `iscsi` connection_info for LUN `lun` of `iqn` at the test portal (Cinder's shape). */
export function connectionFor(iqn: string, lun: number, extra: Record<string, unknown> = {}): ConnectionInfo {
  return { driver_volume_type: 'iscsi', data: { target_portal: PORTAL, target_iqn: iqn, target_lun: lun, ...extra } } as ConnectionInfo;
}

/** A target of `lunCount` disk LUNs (1…n) of 8 MiB each at the test portal. */
export function targetSpec(iqn: string, lunCount: number, extra: Partial<ModelTargetSpec> = {}): ModelTargetSpec {
  const luns: ModelTargetSpec['luns'] = {};
  for (let lun = 1; lun <= lunCount; lun++) luns[lun] = { sizeBytes: 8 * 1024 * 1024 };
  return { iqn, portals: [PORTAL], luns, ...extra };
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
