#!/usr/bin/env node
// The `berth` executable: oclif finds the commands from package.json's `oclif` field.
import { execute } from '@oclif/core';

// `berth --simulate <command>` (the flag before the command, as the docs write it) is the same as
// `<command> --simulate`: oclif only reads flags after the command, so hand it over in the
// environment, which the shared --simulate flag also reads.
const args = process.argv.slice(2);
while (args[0] === '--simulate') {
  args.shift();
  process.env.BERTH_SIMULATE = '1';
}

await execute({ dir: import.meta.url, args });
