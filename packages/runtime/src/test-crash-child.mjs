// A berth process that runs one command and may be killed at an armed fault point
// (BERTH_FAULTS=<point>=crash). Used by crash.e2e.test.ts; prints "done" when it was not killed.
import { openBerth } from '../dist/index.js';

const [dataDir, command, volume] = process.argv.slice(2);
const berth = await openBerth({ dataDir, recover: false });
try {
  if (command === 'attach') await berth.attach({ volume });
  else if (command === 'detach') await berth.detach({ volume });
  console.log('done');
} catch (error) {
  console.log(`failed: ${error.message}`);
} finally {
  await berth.close();
}
