import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { createCommandRunner, type CommandRunner } from '@berth/host';
import { SimulatedHost } from '@berth/simhost';
import { printTable, summarize } from './stats.js';

/** The target for one simulated tool call (a real `iscsiadm` takes ~3 ms). */
const TARGET_MS = 10;

/**
 * One fake tool call of the simulated host (the compiled client: a process, one round trip on
 * the daemon's socket), beside a real tool's call (`losetup --version`) through the same runner,
 * as a ratio measured in this run; and the Node client it replaced, for scale. Calls alternate,
 * so the machine's load falls on both alike.
 */
export async function benchSimhostTool(iterations = 50): Promise<void> {
  const sim = await SimulatedHost.start();
  try {
    const runner = createCommandRunner({ defaultTimeoutMs: 30_000, pathPrepend: [sim.binDir] });
    // The Node client the bin scripts used to be (and still are without a C compiler).
    const nodeClient = path.join(sim.root, 'run/node-iscsiadm');
    const toolClient = import.meta.resolve('@berth/simhost').replace(/index\.js$/, 'tool-client.js');
    await fsp.writeFile(
      nodeClient,
      `#!${process.execPath}\nimport(${JSON.stringify(toolClient)}).then((m) => m.runTool('iscsiadm', ${JSON.stringify(path.join(sim.root, 'run/simhost/kernel.sock'))}));\n`,
      { mode: 0o755 },
    );
    const calls: Array<{ name: string; run: (r: CommandRunner) => Promise<unknown>; samples: number[] }> = [
      { name: 'losetup --version (real)', run: (r) => r.run('losetup', ['--version']), samples: [] },
      { name: 'iscsiadm -m session (fake, C client)', run: (r) => r.run('iscsiadm', ['-m', 'session'], { reject: false }), samples: [] },
      { name: 'multipathd show paths (fake, C client)', run: (r) => r.run('multipathd', ['show', 'paths'], { reject: false }), samples: [] },
      { name: 'blockdev --getsize64 (fake, C client)', run: (r) => r.run('blockdev', ['--getsize64', '/dev/nothing'], { reject: false }), samples: [] },
    ];
    const nodeCall = { name: 'iscsiadm -m session (fake, Node client)', run: (r: CommandRunner) => r.run(nodeClient, ['-m', 'session'], { reject: false }), samples: [] as number[] };
    for (const c of calls) await c.run(runner);
    for (let i = 0; i < iterations; i++) {
      for (const c of calls) {
        const t = performance.now();
        await c.run(runner);
        c.samples.push(performance.now() - t);
      }
      // The Node client is slow: a fifth as many samples keep the run short.
      if (i % 5 === 0) {
        const t = performance.now();
        await nodeCall.run(runner);
        nodeCall.samples.push(performance.now() - t);
      }
    }
    const real = summarize(calls[0]!.samples).p50;
    const rows = [...calls, nodeCall].map((c) => {
      const s = summarize(c.samples);
      return [c.name, s.p50, s.p90, s.max, s.p50 / real];
    });
    printTable(`one tool call through @berth/host's runner, ${iterations} alternating runs (ms; ratio = p50 / losetup's p50)`, ['call', 'p50', 'p90', 'max', 'ratio'], rows);
    const fake = summarize(calls[1]!.samples).p50;
    console.log(`target: one fake tool call ≤ ${TARGET_MS} ms — ${fake.toFixed(2)} ms p50 (${fake <= TARGET_MS ? 'met' : 'NOT met'}); ${(fake / real).toFixed(2)}× losetup --version`);
  } finally {
    await sim.stop();
  }
}
