// Build step of @berth/simhost: compile the fake tools' client (simhost-tool.c) into
// dist/simhost-tool. Without it the simulated host still works, with a Node client per tool call
// (100-250 ms each instead of ~1 ms).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileNative } from '@berth/host/native-build';

const here = path.dirname(fileURLToPath(import.meta.url));
compileNative({
  pkg: '@berth/simhost',
  source: path.join(here, 'simhost-tool.c'),
  target: path.resolve(here, '../../dist/simhost-tool'),
  without: 'the simulated tools fall back to a Node client per call (slow)',
  werror: true,
  // A client that stops compiling is a bug to fix, not a reason to run every tool call slowly.
  failOnError: true,
});
