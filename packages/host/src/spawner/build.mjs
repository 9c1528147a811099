// Build step of @berth/host: compile berth-spawner (berth-spawner.c) into dist/berth-spawner.
// Without it the runner starts commands with Node's own spawn (a fork of the calling process per
// command, slower in a large process); spawner.e2e.test.ts fails when it is missing.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileNative } from '../native-build.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
compileNative({
  pkg: '@berth/host',
  source: path.join(here, 'berth-spawner.c'),
  target: path.resolve(here, '../../dist/berth-spawner'),
  without: "commands are started with Node's spawn (a fork per command)",
});
