import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { definePlugin, PLUGIN_API_VERSION, silentLogger, type BerthPlugin, type VolumeBackend } from '@berth/core';
import { spawnerPid, type CommandRunner, type HostServices } from '@berth/host';
import { openBerth } from '@berth/runtime';
import { SimulatedHost } from '@berth/simhost';
import { printTable, summarize } from './stats.js';

const IQN = 'iqn.2026-11.io.berth.bench:target';
const PORTAL = '127.0.0.1:3260';

/** A backend whose volumes are LUNs of one target on the simulated host's model SAN. */
function simSanPlugin(sim: SimulatedHost): BerthPlugin {
  const luns = new Map<string, number>();
  let next = 1;
  return definePlugin({
    name: 'bench-sim-san',
    apiVersion: PLUGIN_API_VERSION,
    register(registry) {
      registry.backend('sim-san', (): VolumeBackend => ({
        name: 'sim-san',
        async create(volume) {
          const lun = next++;
          luns.set(volume.id, lun);
          await sim.san.addLun(IQN, lun, { sizeBytes: volume.sizeBytes });
          return { providerLocation: `${IQN}:${lun}` };
        },
        async delete(volume) {
          const lun = luns.get(volume.id);
          if (lun !== undefined) await sim.san.removeLun(IQN, lun);
        },
        async initializeConnection(volume) {
          return { driver_volume_type: 'iscsi', data: { target_portal: PORTAL, target_iqn: IQN, target_lun: luns.get(volume.id)!, volume_id: volume.id } };
        },
        async terminateConnection() {},
        async check() {
          return { ok: true, summary: 'simulated SAN' };
        },
      }));
    },
  });
}

/** Wrap a runner to add up the time spent in commands (the unavoidable work). */
function timedRunner(runner: CommandRunner, spent: { ms: number; count: number }): CommandRunner {
  return {
    async run(file, args, options) {
      const t = performance.now();
      try {
        return await runner.run(file, args, options);
      } finally {
        spent.ms += performance.now() - t;
        spent.count += 1;
      }
    },
  };
}

/**
 * CPU ms (user + system) of a process from `/proc/<pid>/stat`, and of its children it has waited
 * for (the tool processes berth ran); `undefined` where there is no procfs or no such process.
 */
function procCpuMs(pid: number | 'self'): { own: number; children: number } | undefined {
  try {
    // Fields after the command name (which may hold spaces): utime is field 14, cutime 16.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    const tick = 10; // USER_HZ is 100 on Linux
    return { own: (Number(fields[11]) + Number(fields[12])) * tick, children: (Number(fields[13]) + Number(fields[14])) * tick };
  } catch {
    return undefined;
  }
}

/**
 * Attach and detach over iSCSI on the simulated host (pure model SAN, device delay configurable,
 * default 20 ms): the time of each step and of the whole operation, for 1 LUN and for 32 LUNs of
 * one target attached concurrently, beside the unavoidable work (the commands the driver runs —
 * each a process start of the simulator's iscsiadm — and the device delay).
 */
export async function benchAttachIscsiSim(options: { deviceDelayMs?: number; iterations?: number; concurrent?: number; detached?: boolean } = {}): Promise<void> {
  const deviceDelayMs = options.deviceDelayMs ?? 20;
  // The simulator's kernel daemon in its own process (as `berth --simulate` runs it, and as a
  // real kernel's work is not berth's): then the process CPU rows are berth's alone.
  const detached = options.detached ?? process.env.BENCH_SIMHOST_DETACHED === '1';
  const iterations = options.iterations ?? 5;
  const concurrent = options.concurrent ?? 32;
  // The simulator's sysfs is real files: on tmpfs (if the machine has /dev/shm) their creation
  // costs what the kernel's would, not what a loaded disk's metadata writes cost.
  process.env.BERTH_SIMHOST_TMPDIR ??= existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const sim = await SimulatedHost.start({ deviceDelayMs, detached });
  const daemonPid = detached ? Number(readFileSync(path.join(sim.root, 'run/simhost/kernel.pid'), 'utf8').trim()) : undefined;
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'berth-bench-iscsi-'));
  try {
    await sim.san.addTarget({ iqn: IQN, portals: [PORTAL], luns: {} });
    const spent = { ms: 0, count: 0 };
    const base = sim.hostServices();
    const host: HostServices = { ...base, runner: timedRunner(base.runner, spent) };
    const berth = await openBerth({ dataDir, env: {}, logger: silentLogger, host, extraPlugins: [simSanPlugin(sim)] });
    try {
      // One LUN, attached and detached `iterations` times.
      await berth.createVolume({ name: 'one', sizeBytes: 64 << 20, backend: 'sim-san' });
      const steps: Record<string, number[]> = {};
      const whole = { attach: [] as number[], detach: [] as number[] };
      const work = { attach: [] as number[], detach: [] as number[] };
      const commands = { attach: [] as number[], detach: [] as number[] };
      for (let i = 0; i < iterations; i++) {
        for (const kind of ['attach', 'detach'] as const) {
          spent.ms = 0;
          spent.count = 0;
          const t = performance.now();
          const outcome = kind === 'attach' ? await berth.attach({ volume: 'one' }) : await berth.detach({ volume: 'one' });
          whole[kind].push(performance.now() - t);
          work[kind].push(spent.ms + (kind === 'attach' ? deviceDelayMs : 0));
          commands[kind].push(spent.count);
          const timings = (outcome.operation.result?.timings ?? {}) as Record<string, number>;
          for (const [step, ms] of Object.entries(timings)) (steps[`${kind}.${step}`] ??= []).push(ms);
        }
      }
      const row = (name: string, samples: number[]): Array<string | number> => {
        const s = summarize(samples);
        return [name, s.p50, s.max];
      };
      printTable(`iSCSI on the simulated host, 1 LUN, device delay ${deviceDelayMs} ms, ${iterations} cycles (ms)`, ['step', 'p50', 'max'], [
        ...Object.entries(steps).map(([k, v]) => row(k, v)),
        row('attach (whole)', whole.attach),
        row('  unavoidable: commands + device delay', work.attach),
        row('  overhead beyond it', whole.attach.map((w, i) => w - work.attach[i]!)),
        row('detach (whole)', whole.detach),
        row('  unavoidable: commands', work.detach),
        row('  overhead beyond it', whole.detach.map((w, i) => w - work.detach[i]!)),
      ]);
      console.log(`commands per attach: ${commands.attach[commands.attach.length - 1]}, per detach: ${commands.detach[commands.detach.length - 1]}`);

      // N LUNs of one target attached concurrently: one login, N scans.
      for (let i = 0; i < concurrent; i++) await berth.createVolume({ name: `c${i}`, sizeBytes: 16 << 20, backend: 'sim-san' });
      const names = Array.from({ length: concurrent }, (_, i) => `c${i}`);
      // This process's CPU (berth, and the simulator's daemon where it runs in it): steadier than wall clock under load.
      const cpuMs = (since: NodeJS.CpuUsage): number => {
        const used = process.cpuUsage(since);
        return (used.user + used.system) / 1000;
      };
      let cpu = process.cpuUsage();
      let t = performance.now();
      const attached = await Promise.all(names.map((volume) => berth.attach({ volume })));
      const attachAll = performance.now() - t;
      const attachCpu = cpuMs(cpu);
      const perStep: Record<string, number[]> = {};
      for (const o of attached) for (const [step, ms] of Object.entries(o.attachment?.timings ?? {})) (perStep[step] ??= []).push(ms);
      const state = await sim.state();
      spent.count = 0;
      // The tools are berth-spawner's children when it runs (its CPU, relaying, counted with them), else this process's.
      const toolParent = spawnerPid() ?? 'self';
      const toolCpu = (p: { own: number; children: number } | undefined): number | undefined => (p === undefined ? undefined : toolParent === 'self' ? p.children : p.own + p.children);
      const procBefore = procCpuMs(toolParent);
      const daemonBefore = daemonPid === undefined ? undefined : procCpuMs(daemonPid);
      cpu = process.cpuUsage();
      t = performance.now();
      const detachedAll = await Promise.all(names.map((volume) => berth.detach({ volume })));
      const detachAll = performance.now() - t;
      const detachCpu = cpuMs(cpu);
      const procAfter = procCpuMs(toolParent);
      const daemonAfter = daemonPid === undefined ? undefined : procCpuMs(daemonPid);
      const detachCommands = spent.count;
      const perDetachStep: Record<string, number[]> = {};
      for (const o of detachedAll) for (const [step, ms] of Object.entries((o.operation.result?.timings ?? {}) as Record<string, number>)) (perDetachStep[step] ??= []).push(ms);
      printTable(`${concurrent} LUNs of one target attached concurrently (ms per attach)`, ['step', 'p50', 'max'], [
        ...Object.entries(perStep).map(([k, v]) => row(k, v)),
      ]);
      printTable(`${concurrent} LUNs of one target detached concurrently (ms per detach)`, ['step', 'p50', 'max'], [
        ...Object.entries(perDetachStep).map(([k, v]) => row(k, v)),
      ]);
      printTable(`${concurrent} LUNs, wall clock (ms)`, ['what', 'ms'], [
        ['attach all', attachAll],
        ['detach all', detachAll],
        ['detach all / one detach (p50), target <= 3', detachAll / summarize(whole.detach).p50],
        ['  target met (issue 12)', detachAll / summarize(whole.detach).p50 <= 3 ? 'yes' : 'no'],
        ['sessions while attached (want 1)', state.sessions.length],
        ['CPU of this process per attach, all at once', attachCpu / concurrent],
        ['CPU of this process per detach, all at once', detachCpu / concurrent],
        ['  tool processes per detach (commands)', detachCommands / concurrent],
        ...(procBefore && procAfter
          ? [[`  CPU of the tool processes per detach (10 ms ticks${toolParent === 'self' ? '' : ', berth-spawner\'s included'})`, ((toolCpu(procAfter) ?? 0) - (toolCpu(procBefore) ?? 0)) / concurrent] as Array<string | number>]
          : []),
        ...(daemonBefore && daemonAfter
          ? [['  CPU of the simulator\'s daemon per detach (detached, 10 ms ticks)', (daemonAfter.own - daemonBefore.own) / concurrent] as Array<string | number>]
          : [['  the simulator\'s daemon', detached ? 'no /proc' : 'in this process (BENCH_SIMHOST_DETACHED=1: its own)']]),
      ]);
    } finally {
      await berth.close();
    }
  } finally {
    await sim.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
}
