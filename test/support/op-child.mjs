// A berth process that runs one attach or detach and may be killed at an armed fault point
// (BERTH_FAULTS=<point>=crash). Used by the crash and soak suites in e2e/; prints "done" or
// "failed: <message>" when it was not killed.
// Usage: op-child.mjs <dataDir> attach|detach <volume> [<server>] [--multipath]
//        op-child.mjs <dataDir> create|extend <volume> <sizeBytes> | delete <volume>
import { openBerth } from '@berth/runtime';

const args = process.argv.slice(2);
const multipath = args.includes('--multipath');
const [dataDir, command, volume, server] = args.filter((a) => a !== '--multipath');
const berth = await openBerth({ dataDir, recover: false });
try {
  if (command === 'attach') await berth.attach({ volume, ...(server ? { server } : {}), ...(multipath ? { multipath } : {}) });
  else if (command === 'detach') await berth.detach({ volume });
  // Volume lifecycle: `create` and `extend` take a size in bytes in the server's place.
  else if (command === 'create') await berth.createVolume({ name: volume, sizeBytes: Number(server) });
  else if (command === 'delete') await berth.deleteVolume(volume);
  else if (command === 'extend') await berth.extendVolume(volume, Number(server));
  console.log('done');
} catch (error) {
  console.log(`failed: ${error.message}`);
} finally {
  await berth.close();
}
