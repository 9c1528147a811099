// A berth process that runs one attach or detach and may be killed at an armed fault point
// (BERTH_FAULTS=<point>=crash). Used by soak.e2e.test.ts; prints "done" or "failed: <message>"
// when it was not killed. Usage: test-op-child.mjs <dataDir> attach|detach <volume> [<server>]
import { openBerth } from '../dist/index.js';

const [dataDir, command, volume, server] = process.argv.slice(2);
const berth = await openBerth({ dataDir, recover: false });
try {
  if (command === 'attach') await berth.attach({ volume, ...(server ? { server } : {}) });
  else if (command === 'detach') await berth.detach({ volume });
  console.log('done');
} catch (error) {
  console.log(`failed: ${error.message}`);
} finally {
  await berth.close();
}
