#!/usr/bin/env node
// The `berth` executable: oclif finds the commands from package.json's `oclif` field.
import { execute } from '@oclif/core';

await execute({ dir: import.meta.url });
