// The real-fault harness of issue 9: the built `berth` CLI's node process killed (SIGKILL) at a
// random moment between its operation row appearing and the command's end, another process holding
// the database's write lock, a data dir on a tmpfs that fills up. After each fault the next command
// (a berth opening on the data dir: it recovers first, as every command does) and a reconcile run,
// and the harness counts what a user would find: volumes or attachments stuck in a transitional or
// error state, loop devices nobody's record names (leaked), and /dev/berth links that lead to
// another volume's device (wrong-device links). Targets: 0, 0, 0, 0.
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readlinkSync, watch } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { execa } from 'execa';
import { silentLogger, type Attachment, type BerthService, type Operation, type Store, type Volume } from '@berth/core';
import { openBerth } from '@berth/runtime';
import { openSqliteStoreReadOnly } from '@berth/store';
import { BERTH_BIN, type BerthSandbox } from '../support/berth-cli.js';
import { LOCK_HOLDER } from '../support/host-state.js';
import { listLoopDevices } from '../support/loop-devices.js';


/** How one CLI command of the harness ended. */
export interface CommandRun {
  args: string[];
  /** Killed by the harness (SIGKILL) after its operation row appeared. */
  killed: boolean;
  /** `<kind>.<step>` of the step running (or last started) when it was killed; `<kind>.before-first-step` when none was. */
  killedAt: string | undefined;
  exitCode: number | undefined;
  /** The error code the CLI printed (`--json` body), when it failed. */
  errorCode: string | undefined;
  /** Milliseconds from the operation row appearing to the end (unkilled runs only). */
  afterRowMs: number | undefined;
}

/** What a user would find after a fault (the four counts the harness must keep at 0). */
export interface Inspection {
  stuck: string[];
  leaked: string[];
  wrongLinks: string[];
  /** Differences `reconcile --dry-run` still finds. */
  leftover: string[];
}

/** The tally of a run, printed as a table at the end. */
export class FaultTally {
  readonly killsByStep = new Map<string, number>();
  readonly exitCodes = new Map<string, number>();
  readonly commands = new Map<string, number>();
  kills = 0;
  stuckAfterNext: string[] = [];
  stuckAfterReconcile: string[] = [];
  leaked: string[] = [];
  wrongLinks: string[] = [];
  leftover: string[] = [];

  /** Count one command run. */
  record(scenario: string, run: CommandRun): void {
    bump(this.commands, `${scenario} ${run.killed ? 'killed' : 'finished'}`);
    if (run.killed) {
      this.kills += 1;
      bump(this.killsByStep, run.killedAt ?? 'unknown');
    } else {
      bump(this.exitCodes, `${run.exitCode ?? '?'}${run.errorCode ? ` ${run.errorCode}` : ''}`);
    }
  }

  /** Add what an inspection found, naming the cycle. */
  add(cycle: string, phase: 'next' | 'reconcile', found: Inspection): void {
    const tag = (items: string[]): string[] => items.map((item) => `${cycle}: ${item}`);
    if (phase === 'next') this.stuckAfterNext.push(...tag(found.stuck));
    else {
      this.stuckAfterReconcile.push(...tag(found.stuck));
      this.leaked.push(...tag(found.leaked));
      this.wrongLinks.push(...tag(found.wrongLinks));
      this.leftover.push(...tag(found.leftover));
    }
  }

  /** The table a run prints. */
  table(title: string, elapsedMs: number): string {
    const rows = (map: Map<string, number>): string[] => [...map.entries()].sort().map(([key, n]) => `    ${key.padEnd(44)} ${String(n).padStart(5)}`);
    return [
      `\n${title}: ${this.kills} kills, ${elapsedMs} ms`,
      '  kills by step (what was running when the CLI was SIGKILLed):',
      ...rows(this.killsByStep),
      '  commands:',
      ...rows(this.commands),
      '  exit codes of the commands that were not killed:',
      ...rows(this.exitCodes),
      `  stuck after the next command: ${this.stuckAfterNext.length}`,
      `  stuck after reconcile:        ${this.stuckAfterReconcile.length}`,
      `  leaked devices:               ${this.leaked.length}`,
      `  wrong-device links:           ${this.wrongLinks.length}`,
      `  left for another reconcile:   ${this.leftover.length}`,
      ...[...this.stuckAfterNext, ...this.stuckAfterReconcile, ...this.leaked, ...this.wrongLinks, ...this.leftover].slice(0, 20).map((line) => `    ! ${line}`),
    ].join('\n');
  }
}

function bump(map: Map<string, number>, key: string): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

/** The environment a CLI run in `sandbox` gets (its own data dir and HOME, nothing from ours). */
export function cliEnv(sandbox: BerthSandbox, extra: Record<string, string> = {}): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined || key.startsWith('BERTH_') || key.startsWith('npm_') || key === 'DEBUG') continue;
    out[key] = value;
  }
  return { ...out, ...sandbox.env, BERTH_LOG_LEVEL: 'silent', ...extra };
}

/** The newest operation in the data dir's database (read-only), if any. */
async function newestOperation(store: Store): Promise<Operation | undefined> {
  return (await store.operations.list({ limit: 1 }))[0];
}

/** Changes to the files of a directory (inotify): `next` resolves at the first one since the last `clear`. */
interface DirectoryChanges {
  clear(): void;
  next(): Promise<void>;
  close(): void;
}

function watchChanges(dir: string): DirectoryChanges {
  // A change while nobody waits is kept (`pending`), so one between a read and the wait is not lost.
  let pending = false;
  let wake: (() => void) | undefined;
  const watcher = watch(dir, () => {
    pending = true;
    wake?.();
  });
  return {
    clear: () => {
      pending = false;
    },
    next: () => (pending ? Promise.resolve() : new Promise<void>((resolve) => (wake = resolve))),
    close: () => {
      wake?.();
      watcher.close();
    },
  };
}

/** Options of one command run. */
export interface RunOptions {
  /** Kill it this many ms after its operation row appears (undefined: let it finish). */
  killAfterRowMs?: number;
  extraEnv?: Record<string, string>;
  /** Called once the operation row appeared (the lock-holder fault starts here). */
  onRow?: () => void;
  timeoutMs?: number;
}

/**
 * Run `berth ARGS --json` as a user does. With `killAfterRowMs`, watch the database for the
 * command's operation row and SIGKILL the CLI's node process that long after it appeared (it may
 * have finished by then: then it was not killed).
 */
export async function runCommand(sandbox: BerthSandbox, reader: Store, args: string[], options: RunOptions = {}): Promise<CommandRun> {
  const before = (await newestOperation(reader))?.id;
  const child = execa(process.execPath, [BERTH_BIN, ...args, '--json'], {
    env: cliEnv(sandbox, options.extraEnv),
    extendEnv: false,
    reject: false,
    cwd: sandbox.root,
    timeout: options.timeoutMs ?? 180_000,
    stdin: 'ignore',
  });
  let ended = false;
  const result = child.then((r) => {
    ended = true;
    return r;
  });
  // Watch for the operation row; the CLI's own start (node, oclif, recovery) comes before it. The
  // database is read again each time a file of the data dir changes (the row is a WAL write), not
  // every few ms: that poll took a good part of a core from the CLI starting beside it.
  let rowAt: number | undefined;
  let operation: Operation | undefined;
  const changes = watchChanges(sandbox.dataDir);
  try {
    while (!ended) {
      changes.clear();
      const newest = await newestOperation(reader).catch(() => undefined);
      if (newest && newest.id !== before && newest.kind !== 'reconcile') {
        operation = newest;
        rowAt = Date.now();
        options.onRow?.();
        break;
      }
      await Promise.race([result, changes.next()]);
    }
  } finally {
    changes.close();
  }
  let killed = false;
  if (rowAt !== undefined && options.killAfterRowMs !== undefined && !ended) {
    await Promise.race([result, sleep(options.killAfterRowMs)]);
    if (!ended) {
      killed = child.kill('SIGKILL');
    }
  }
  const finished = await result;
  killed = killed && finished.signal === 'SIGKILL';
  let killedAt: string | undefined;
  if (killed && operation) {
    const after = (await reader.operations.get(operation.id)) ?? operation;
    const steps = after.steps;
    const last = steps[steps.length - 1];
    killedAt = `${after.kind}.${last ? `${last.name}${last.phase === 'undo' ? ' (undo)' : ''}` : 'before-first-step'}`;
  }
  let errorCode: string | undefined;
  if (!killed && finished.exitCode !== 0) {
    try {
      errorCode = (JSON.parse(String(finished.stdout)) as { error?: { code?: string } }).error?.code;
    } catch {
      errorCode = 'unparsed';
    }
  }
  return {
    args,
    killed,
    killedAt,
    exitCode: killed ? undefined : (finished.exitCode ?? undefined),
    errorCode,
    afterRowMs: !killed && rowAt !== undefined ? Date.now() - rowAt : undefined,
  };
}

/** A read-only view of the data dir's database (what the harness watches and inspects). */
export async function openReader(dataDir: string): Promise<Store> {
  return openSqliteStoreReadOnly({ filename: path.join(dataDir, 'berth.db') });
}

/** The next command: a berth opening on the data dir (it recovers what a dead process left, as every command does). */
export async function nextCommand(dataDir: string, options: { simulate?: boolean; env?: Record<string, string> } = {}): Promise<BerthService> {
  return openBerth({ dataDir, logger: silentLogger, env: { ...options.env }, ...(options.simulate ? { simulate: true } : {}) });
}

const TRANSITIONAL_VOLUME = new Set(['reserved', 'attaching', 'detaching', 'creating', 'extending', 'deleting', 'error']);
const TRANSITIONAL_ATTACHMENT = new Set(['reserved', 'attaching', 'detaching', 'error_attaching', 'error_detaching']);

/** Stuck states: a volume or an attachment in a transitional or error state, a running operation. */
export async function stuckStates(berth: BerthService): Promise<string[]> {
  const out: string[] = [];
  for (const volume of await berth.listVolumes()) if (TRANSITIONAL_VOLUME.has(volume.status)) out.push(`volume ${volume.name} is ${volume.status}`);
  for (const attachment of await berth.listAttachments()) {
    if (TRANSITIONAL_ATTACHMENT.has(attachment.status)) out.push(`attachment ${attachment.id} is ${attachment.status}${attachment.error ? ` (${attachment.error})` : ''}`);
  }
  for (const operation of await berth.listOperations({ state: 'running' })) out.push(`operation ${operation.kind} ${operation.id} is still running`);
  return out;
}

/**
 * Leaked devices and wrong-device links, from the machine's side: every loop device over a volume
 * file in the data dir must be the device of a live attachment of that volume; every
 * `/dev/berth/<id>` named after one of this data dir's volumes or attachments must lead to that
 * attachment's device (for a volume: to the device of its attachments on this host), and that
 * device must be the volume's (a loop device backing its file, or the recorded real path).
 */
export async function machineState(berth: BerthService, dataDir: string, knownIds: Set<string>): Promise<{ leaked: string[]; wrongLinks: string[] }> {
  const volumes = await berth.listVolumes();
  const attachments = (await berth.listAttachments()).filter((a) => a.status !== 'detached');
  const byId = new Map<string, Volume>(volumes.map((v) => [v.id, v]));
  for (const id of [...volumes.map((v) => v.id), ...attachments.map((a) => a.id)]) knownIds.add(id);
  const loops = listLoopDevices();
  const backing = new Map(loops.map((d) => [d.name, d.backFile]));
  const leaked: string[] = [];
  const wrongLinks: string[] = [];
  const volumesDir = `${dataDir}/volumes/`;
  // The device as this machine sees it: under the host root its transport ran on.
  const deviceOf = (a: Attachment): string | undefined => (a.device ? (a.hostRoot ? path.posix.join(a.hostRoot, a.device.path) : a.device.path) : undefined);
  for (const loop of loops) {
    const file = backing.get(loop.name) ?? '';
    if (!file.startsWith(volumesDir)) continue;
    const owners = attachments.filter((a) => a.device?.path === loop.name && byId.get(a.volumeId)?.providerLocation === file);
    if (owners.length === 0) leaked.push(`${loop.name} backs ${path.basename(file)} and no attachment names it`);
  }
  const rightDevice = (volume: Volume | undefined, target: string): boolean => {
    if (!volume) return false;
    const file = backing.get(target);
    // A loop device must back the volume's file; another device (iSCSI on the simulated host) must be a recorded one.
    if (file !== undefined && volume.backend === 'file') return file === volume.providerLocation;
    return attachments.some((a) => a.volumeId === volume.id && deviceOf(a) === target);
  };
  const links = existsSync('/dev/berth') ? readdirSync('/dev/berth') : [];
  for (const name of links) {
    if (!knownIds.has(name)) continue;
    const link = `/dev/berth/${name}`;
    let target: string;
    try {
      if (!lstatSync(link).isSymbolicLink()) continue;
      target = readlinkSync(link);
    } catch {
      continue;
    }
    const attachment = attachments.find((a) => a.id === name);
    const volume = byId.get(name);
    if (attachment) {
      if (target !== deviceOf(attachment) || !rightDevice(byId.get(attachment.volumeId), target)) wrongLinks.push(`${link} → ${target}, but attachment ${name} has ${deviceOf(attachment) ?? 'no device'}`);
    } else if (volume) {
      const mine = attachments.filter((a) => a.volumeId === volume.id && a.status === 'attached' && deviceOf(a) === target);
      if (mine.length === 0 || !rightDevice(volume, target)) wrongLinks.push(`${link} → ${target}, which is not volume ${volume.name}'s device`);
    } else {
      wrongLinks.push(`${link} → ${target} outlived its attachment`);
    }
  }
  return { leaked, wrongLinks };
}

/** After a fault: the next command (recovery), then reconcile, each followed by the counts. */
export async function afterFault(
  tally: FaultTally,
  cycle: string,
  dataDir: string,
  knownIds: Set<string>,
  options: { simulate?: boolean } = {},
): Promise<void> {
  const berth = await nextCommand(dataDir, options);
  try {
    tally.add(cycle, 'next', { stuck: await stuckStates(berth), leaked: [], wrongLinks: [], leftover: [] });
    const report = await berth.reconcile!();
    const failedFixes = report.differences.filter((d) => d.state === 'failed').map((d) => `reconcile could not fix ${d.kind} ${d.resource}: ${d.result ?? ''}`);
    const again = await berth.reconcile!({ dryRun: true });
    const leftover = again.differences.map((d) => `${d.kind} ${d.resource}`);
    const { leaked, wrongLinks } = await machineState(berth, dataDir, knownIds);
    tally.add(cycle, 'reconcile', { stuck: [...(await stuckStates(berth)), ...failedFixes], leaked, wrongLinks, leftover });
  } finally {
    await berth.close();
  }
}

/** A process holding the database's write lock for `holdMs`; resolves once it holds it. */
export async function holdWriteLock(dataDir: string, holdMs: number): Promise<{ released: Promise<void> }> {
  const child = execa(process.execPath, [LOCK_HOLDER, path.join(dataDir, 'berth.db'), String(holdMs)], { reject: false, stdin: 'ignore' });
  await new Promise<void>((resolve) => {
    child.stdout?.once('data', () => resolve());
    void child.then(() => resolve());
  });
  return { released: child.then(() => undefined) };
}

/** Mount a tmpfs of `sizeMiB` at `dir` (made here; unmount it with `unmountTmpfs`). */
export function mountTmpfs(dir: string, sizeMiB: number): void {
  const result = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=0700`, 'berth-faults', dir], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`mount tmpfs at ${dir}: ${result.stderr}`);
}

/** Unmount what `mountTmpfs` mounted (after its loop devices are detached). */
export function unmountTmpfs(dir: string): void {
  const result = spawnSync('umount', [dir], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`umount ${dir}: ${result.stderr}`);
}
