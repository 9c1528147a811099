import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { createCommandRunner, type CommandRunner } from '@berth/host';
import { callTool, SimulatedHost } from '@berth/simhost';
import { printTable, summarize } from './stats.js';

/** The target for one simulated tool call (a real `iscsiadm` takes ~3 ms). */
const TARGET_MS = 10;

interface Call {
  name: string;
  run: () => Promise<unknown>;
  samples: number[];
}

/**
 * One fake tool call of the simulated host (the compiled client: a process, one round trip on
 * the daemon's socket), beside a real tool's call (`losetup --version`) and a bare process start
 * (`/bin/true`) through the same runner, as ratios measured in this run. Where a call's time
 * goes: the process start (`/bin/true`), the daemon's share (one round trip on its socket from
 * this process, no process), the rest is the client's own start. The daemon runs in this process
 * (as in the tests: the runner and the daemon share one event loop) and detached (as iscsid does,
 * in its own process). The Node client the C one replaced is timed for scale. Calls alternate, so
 * the machine's load falls on all alike.
 */
export async function benchSimhostTool(iterations = 50): Promise<void> {
  const sim = await SimulatedHost.start();
  const detached = await SimulatedHost.start({ detached: true });
  try {
    const runner = createCommandRunner({ defaultTimeoutMs: 30_000, pathPrepend: [sim.binDir] });
    const other: CommandRunner = createCommandRunner({ defaultTimeoutMs: 30_000, pathPrepend: [detached.binDir] });
    const socket = path.join(sim.root, 'run/simhost/kernel.sock');
    // The Node client the bin scripts used to be (and still are without a C compiler).
    const nodeClient = path.join(sim.root, 'run/node-iscsiadm');
    const toolClient = import.meta.resolve('@berth/simhost').replace(/index\.js$/, 'tool-client.js');
    await fsp.writeFile(nodeClient, `#!${process.execPath}\nimport(${JSON.stringify(toolClient)}).then((m) => m.runTool('iscsiadm', ${JSON.stringify(socket)}));\n`, {
      mode: 0o755,
    });
    const call = (name: string, run: () => Promise<unknown>): Call => ({ name, run, samples: [] });
    const calls: Call[] = [
      call('losetup --version (real)', () => runner.run('losetup', ['--version'])),
      call('/bin/true (a process start)', () => runner.run('/bin/true', [])),
      call('iscsiadm -m session (fake, C client)', () => runner.run('iscsiadm', ['-m', 'session'], { reject: false })),
      call('  same, daemon detached', () => other.run('iscsiadm', ['-m', 'session'], { reject: false })),
      call('  its socket round trip alone (no process)', () => callTool(socket, { tool: 'iscsiadm', argv: ['-m', 'session'], stdin: Buffer.alloc(0) })),
      call('multipathd show paths (fake, C client)', () => runner.run('multipathd', ['show', 'paths'], { reject: false })),
      call('blockdev --getsize64 (fake, C client)', () => runner.run('blockdev', ['--getsize64', '/dev/nothing'], { reject: false })),
    ];
    const nodeCall = call('iscsiadm -m session (fake, Node client)', () => runner.run(nodeClient, ['-m', 'session'], { reject: false }));
    for (const c of calls) await c.run();
    for (let i = 0; i < iterations; i++) {
      for (const c of calls) {
        const t = performance.now();
        await c.run();
        c.samples.push(performance.now() - t);
      }
      // The Node client is slow: a fifth as many samples keep the run short.
      if (i % 5 === 0) {
        const t = performance.now();
        await nodeCall.run();
        nodeCall.samples.push(performance.now() - t);
      }
    }
    const p50 = (c: Call): number => summarize(c.samples).p50;
    const real = p50(calls[0]!);
    const rows = [...calls, nodeCall].map((c) => {
      const s = summarize(c.samples);
      return [c.name, s.p50, s.p90, s.max, s.p50 / real];
    });
    printTable(`one tool call through @berth/host's runner, ${iterations} alternating runs (ms; ratio = p50 / losetup's p50)`, ['call', 'p50', 'p90', 'max', 'ratio'], rows);
    const fake = p50(calls[2]!);
    const start = p50(calls[1]!);
    console.log(
      `target: one fake tool call ≤ ${TARGET_MS} ms — ${fake.toFixed(2)} ms p50 (${fake <= TARGET_MS ? 'met' : 'NOT met'}); ${(fake / real).toFixed(2)}× losetup --version; ` +
        `${(fake - start).toFixed(2)} ms beyond a process start (/bin/true ${start.toFixed(2)} ms), of which the daemon's round trip ${p50(calls[4]!).toFixed(2)} ms`,
    );
  } finally {
    await detached.stop();
    await sim.stop();
  }
}
