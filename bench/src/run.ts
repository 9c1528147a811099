import { benchApiCycle } from './api-cycle.js';
import { benchAttachGuest } from './attach-guest.js';
import { benchAttachIscsiSim } from './attach-iscsi-sim.js';
import { benchAttachIscsiUser } from './attach-iscsi-user.js';
import { benchAttachLoop, loopAttachModes } from './attach-loop.js';
import { benchAttachMultipath } from './attach-multipath.js';
import { benchOsBrickSideBySide } from './os-brick-side-by-side.js';
import { benchSimhostTool } from './simhost-tool.js';
import { benchCliStart } from './cli-start.js';
import { benchManyHosts } from './many-hosts.js';
import { benchFleet } from './fleet.js';
import { benchStoreStatements } from './store-statements.js';
import { installSignalCleanup } from './signal-cleanup.js';

installSignalCleanup();

const env = (name: string, fallback: number): number => Number(process.env[name] ?? fallback);

/** Every benchmark, or those named on the command line (`npm run bench -- attach-loop`). */
const benches: Record<string, () => Promise<void>> = {
  'attach-loop': () => benchAttachLoop(env('BENCH_ITERATIONS', 50), loopAttachModes(process.env.BENCH_LOOP_ATTACH)),
  'attach-iscsi-sim': () =>
    benchAttachIscsiSim({
      deviceDelayMs: env('BENCH_DEVICE_DELAY_MS', 20),
      iterations: env('BENCH_ITERATIONS_ISCSI', 5),
      concurrent: env('BENCH_CONCURRENT_LUNS', 32),
    }),
  'store-statements': () => benchStoreStatements(env('BENCH_STATEMENT_ROUNDS', 2)),
  'attach-iscsi-user': () => benchAttachIscsiUser(env('BENCH_ITERATIONS_ISCSI_USER', 10), env('BENCH_FIO_MIB', 256), env('BENCH_FIO_ROUNDS', 3)),
  'attach-multipath': () => benchAttachMultipath(env('BENCH_ITERATIONS_MULTIPATH', 3)),
  'simhost-tool': () => benchSimhostTool(env('BENCH_TOOL_CALLS', 50)),
  'os-brick-side-by-side': () => benchOsBrickSideBySide(env('BENCH_ITERATIONS_OSBRICK', 3), process.env.BENCH_OSBRICK_CASES?.split(',')),
  'api-cycle': () =>
    benchApiCycle(
      env('BENCH_API_CYCLES', 100),
      (process.env.BENCH_API_CONCURRENCY ?? '1,4').split(',').map(Number),
      env('BENCH_API_ROUNDS', 4),
    ),
  'attach-guest': () => benchAttachGuest(env('BENCH_ITERATIONS_GUEST', 5)),
  'cli-start': () => benchCliStart(env('BENCH_CLI_ROUNDS', 10), process.env.BENCH_CLI_BASELINE),
  'many-hosts': () => benchManyHosts(env('BENCH_HOSTS_CYCLES', 40), env('BENCH_HOSTS_CONCURRENCY', 4), env('BENCH_HOSTS_ROUNDS', 4)),
  fleet: () =>
    benchFleet(
      env('BENCH_FLEET_HOSTS', 100),
      env('BENCH_FLEET_CYCLES', 400),
      env('BENCH_FLEET_CONCURRENCY', 32),
      (process.env.BENCH_FLEET_REPLICAS ?? '1,2').split(',').map(Number),
    ),
};

const wanted = process.argv.slice(2);
for (const name of wanted) {
  if (!(name in benches)) throw new Error(`unknown benchmark ${name}; known: ${Object.keys(benches).join(', ')}`);
}
for (const [name, run] of Object.entries(benches)) {
  if (wanted.length > 0 && !wanted.includes(name)) continue;
  await run();
}
