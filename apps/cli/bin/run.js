#!/usr/bin/env node
// The `berth` executable: oclif finds the commands from package.json's `oclif` field.
import { execute } from '@oclif/core';

// Global flags before the command (`berth --simulate attach db1`, `berth --api URL detach db1`,
// `berth --store postgres://… attach db1`, as the docs write them) mean the same as after it: oclif only reads flags after the command, so
// hand them over in the environment, which the shared flags also read.
const args = process.argv.slice(2);
for (;;) {
  if (args[0] === '--simulate') {
    args.shift();
    process.env.BERTH_SIMULATE = '1';
  } else if (args[0] === '--api' && args[1] !== undefined) {
    process.env.BERTH_API_URL = args[1];
    args.splice(0, 2);
  } else if (args[0]?.startsWith('--api=')) {
    process.env.BERTH_API_URL = args[0].slice('--api='.length);
    args.shift();
  } else if (args[0] === '--store' && args[1] !== undefined) {
    process.env.BERTH_STORE_URL = args[1];
    args.splice(0, 2);
  } else if (args[0]?.startsWith('--store=')) {
    process.env.BERTH_STORE_URL = args[0].slice('--store='.length);
    args.shift();
  } else {
    break;
  }
}

await execute({ dir: import.meta.url, args });
