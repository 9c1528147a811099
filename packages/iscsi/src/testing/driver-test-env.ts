import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { BerthError, type ConnectionInfo, type Logger, type PluginContext, type TransportCallContext, type TransportDriver } from '@berth/core';
import { CommandError, type CommandResult, type CommandRunner, type HostServices, type RunOptions } from '@berth/host';

/** A command a driver ran, as argv. */
export type Run = readonly string[];

/** Makes a run fail as the tool would (return a result) or lets it through (`undefined`). */
export type RunFault = (file: string, args: readonly string[]) => Partial<CommandResult> | undefined;

/** One log line a driver wrote. */
export interface LogLine {
  level: 'debug' | 'info' | 'warn' | 'error';
  obj: Record<string, unknown>;
  msg: string | undefined;
}

/** The slice of a simulated host a driver test needs (`@berth/testkit`'s `SimulatedHost` has it). */
export interface SimLike {
  hostServices(): HostServices;
  stop(): Promise<void>;
}

/** A driver on a simulated host with a data dir, its commands and logs recorded; `dispose()` removes everything. */
export interface DriverTestEnv<O> {
  host: HostServices;
  dataDir: string;
  driver: TransportDriver;
  /** Every command the driver ran through its runner, in order. */
  runs: Run[];
  /** What the driver logged. */
  logs: LogLine[];
  /** Set to make chosen commands fail (a tool failing, which the simulator cannot inject). */
  fault: RunFault | undefined;
  /** A new driver instance on the same host and data dir (a restart of berth). */
  restart(options?: O): TransportDriver;
  /** `iscsiadm -m node` as a user would run it: the record lines (empty when none). */
  nodeRecords(): Promise<string[]>;
  /** `iscsiadm -m node -T IQN -p PORTAL` as key → value (undefined when there is no record). */
  nodeRecord(iqn: string, portal: string): Promise<Record<string, string> | undefined>;
  /** The text of a volume's persisted attach state, or undefined. */
  stateText(volumeId: string): Promise<string | undefined>;
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

/**
 * Start a driver test environment: `start(dataDir)` starts the simulated host (and adds its
 * targets) in a fresh data dir, `make` builds the driver on it. Everything is removed by `dispose()`,
 * or at once when the start fails.
 */
export async function startDriverTestEnv<O, S extends SimLike>(spec: {
  dataDirPrefix: string;
  start(dataDir: string): Promise<S>;
  make(context: PluginContext<O>): TransportDriver;
  options: O;
  stateSubdir: string;
}): Promise<DriverTestEnv<O> & { sim: S }> {
  const dataDir = await mkdtemp(path.join(tmpdir(), spec.dataDirPrefix));
  let sim: S | undefined;
  try {
    sim = await spec.start(dataDir);
  } catch (error) {
    await rm(dataDir, { recursive: true, force: true });
    throw error;
  }
  const running = sim;
  const base = running.hostServices();
  const runs: Run[] = [];
  const logs: LogLine[] = [];
  let fault: RunFault | undefined;
  const runner: CommandRunner = {
    async run(file: string, args: readonly string[], runOptions?: RunOptions): Promise<CommandResult> {
      runs.push([file, ...args]);
      const injected = fault?.(file, args);
      if (injected === undefined) return base.runner.run(file, args, runOptions);
      const result: CommandResult = { command: [file, ...args].join(' '), exitCode: 1, stdout: '', stderr: '', durationMs: 0, timedOut: false, aborted: false, ...injected };
      if (runOptions?.reject === false) return result;
      throw new CommandError(result);
    },
  };
  const make = (options: O): TransportDriver => spec.make({ host: { ...base, runner }, dataDir, options, logger: recordingLogger(logs) });
  return {
    sim: running,
    host: base,
    dataDir,
    driver: make(spec.options),
    runs,
    logs,
    get fault() {
      return fault;
    },
    set fault(value) {
      fault = value;
    },
    restart: (options) => make(options ?? spec.options),
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
    stateText: (volumeId) => readFile(path.join(dataDir, spec.stateSubdir, `${volumeId}.json`), 'utf8').catch(() => undefined),
    loginRuns: () => runs.filter((r) => r[0] === 'iscsiadm' && r.includes('--login')).length,
    async dispose() {
      try {
        await running.stop();
      } finally {
        // A driver's background work (a left login's watcher finishing it) may still write a
        // state file into the tree as it goes: rm retries the directory that was not empty then
        // (CI once failed a passing test on ENOTEMPTY here).
        await rm(dataDir, { recursive: true, force: true, maxRetries: 5 });
      }
    },
  };
}

/** A transport call context with a deadline (and the volume id, when given). */
export function callContext(timeoutMs = 30_000, volumeId?: string): TransportCallContext {
  return { signal: AbortSignal.timeout(timeoutMs), ...(volumeId === undefined ? {} : { volumeId }) };
}

/** The BerthError `promise` rejects with (throws when it resolves or rejects with something else). */
export async function failureOf(promise: Promise<unknown>): Promise<BerthError> {
  const outcome = await promise.then(
    () => undefined,
    (error: unknown) => error,
  );
  if (!BerthError.is(outcome)) throw new Error(`expected a BerthError, got ${String(outcome)}`);
  return outcome;
}

/** os-brick's scsi_wwn of a kernel wwid (`naa.6…` → `36…`). */
export function wwnOf(wwid: string): string {
  return wwid.startsWith('naa.') ? `3${wwid.slice(4)}` : wwid;
}

/** Whether a path under the simulated root exists. */
export async function existsUnder(host: HostServices, hostPath: string): Promise<boolean> {
  return stat(host.fs.resolve(hostPath)).then(
    () => true,
    () => false,
  );
}

/** A model SAN whose LUNs are real loop devices (`@berth/testkit`'s `LoopBackedTargetAccess` has this shape). */
export interface LoopBackedSan {
  model: {
    addTarget(spec: { iqn: string; portals: string[] }): Promise<unknown>;
    addLun(iqn: string, lun: number, spec: { sizeBytes: number }): Promise<unknown>;
  };
  /** Detach every loop device the SAN made. */
  sweep(): Promise<void>;
}

/**
 * A transport conformance setup on the simulated host: a target on `portals` whose LUNs are real
 * loop devices (so `/dev/sdX` and `/dev/dm-N` are real block nodes), a fresh LUN per connection.
 */
export async function loopBackedConformanceSetup<A extends LoopBackedSan>(spec: {
  workDirPrefix: string;
  iqn: string;
  portals: readonly string[];
  san(dir: string): A;
  startSim(san: A): Promise<SimLike>;
  make(host: HostServices, dataDir: string): TransportDriver;
  connection(lun: number): ConnectionInfo;
}): Promise<{ driver: TransportDriver; fs: HostServices['fs']; makeConnection(): Promise<ConnectionInfo>; cleanup(): Promise<void> }> {
  const workDir = await mkdtemp(path.join(tmpdir(), spec.workDirPrefix));
  const san = spec.san(path.join(workDir, 'san'));
  let sim: SimLike | undefined;
  try {
    sim = await spec.startSim(san);
    await san.model.addTarget({ iqn: spec.iqn, portals: [...spec.portals] });
  } catch (error) {
    await sim?.stop();
    await san.sweep();
    await rm(workDir, { recursive: true, force: true });
    throw error;
  }
  const running = sim;
  const host = running.hostServices();
  let nextLun = 1;
  return {
    driver: spec.make(host, path.join(workDir, 'data')),
    fs: host.fs,
    async makeConnection() {
      const lun = nextLun++;
      await san.model.addLun(spec.iqn, lun, { sizeBytes: 4 * 1024 * 1024 });
      return spec.connection(lun);
    },
    async cleanup() {
      try {
        await running.stop();
      } finally {
        await san.sweep();
        await rm(workDir, { recursive: true, force: true });
      }
    },
  };
}

/** Start a simulated host and set it up (targets); stopped again when the setup fails. */
export async function startSimWith<S extends SimLike>(start: () => Promise<S>, setup: (sim: S) => Promise<void>): Promise<S> {
  const sim = await start();
  try {
    await setup(sim);
  } catch (error) {
    await sim.stop();
    throw error;
  }
  return sim;
}
