#!/usr/bin/env node
// Writes oclif.manifest.json after `tsc`: with it, oclif knows every command's flags, args and
// help from one JSON file and imports a command's module only when that command runs, so
// `berth --version` and `berth --help` load none of berth's packages. The commands come from the
// bundle (package.json: oclif's "explicit" discovery, `COMMANDS` in dist/bundle/berth.cjs). What oclif's own
// `oclif manifest` does, without its build tool's dependencies.
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Plugin } from '@oclif/core';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const plugin = new Plugin({ root, type: 'core', isRoot: true, ignoreManifest: true, errorOnManifestCreate: true });
await plugin.load();
const file = join(root, 'oclif.manifest.json');
await writeFile(file, `${JSON.stringify(plugin.manifest, null, 2)}\n`);
process.stdout.write(`wrote ${file} (${Object.keys(plugin.manifest.commands).length} commands)\n`);
