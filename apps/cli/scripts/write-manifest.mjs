#!/usr/bin/env node
// Writes oclif.manifest.json after `tsc`: with it, oclif knows every command's flags, args and
// help from one JSON file and imports a command's module only when that command runs, so
// `berth --version` and `berth --help` load none of berth's packages. What oclif's own
// `oclif manifest` does, without its build tool's dependencies.
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Plugin } from '@oclif/core';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const plugin = new Plugin({ root, type: 'core', isRoot: true, ignoreManifest: true, errorOnManifestCreate: true });
await plugin.load();
// oclif imports a command from its manifest entry's relativePath: point it at the bundled module
// (scripts/bundle.mjs, which runs first) when there is one.
for (const command of Object.values(plugin.manifest.commands)) {
  const bundled = ['dist', 'bundle', ...command.relativePath.slice(1)];
  if (command.relativePath[0] === 'dist' && existsSync(join(root, ...bundled))) command.relativePath = bundled;
}
const file = join(root, 'oclif.manifest.json');
await writeFile(file, `${JSON.stringify(plugin.manifest, null, 2)}\n`);
process.stdout.write(`wrote ${file} (${Object.keys(plugin.manifest.commands).length} commands)\n`);
