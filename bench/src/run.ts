import { benchAttachLoop } from './attach-loop.js';

/** Every benchmark, or those named on the command line. */
const benches: Record<string, () => Promise<void>> = {
  'attach-loop': () => benchAttachLoop(Number(process.env.BENCH_ITERATIONS ?? 50)),
};

const wanted = process.argv.slice(2);
for (const [name, run] of Object.entries(benches)) {
  if (wanted.length > 0 && !wanted.includes(name)) continue;
  await run();
}
