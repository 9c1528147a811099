// Build step of @berth/host: compile berth-loop-detach (berth-loop-detach.c) into
// dist/berth-loop-detach (`LOOP_DETACH_PROGRAM`). Without it the loop transport and @berth/qemu
// detach with fuser and losetup, as before.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileNative } from '../native-build.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
compileNative({
  pkg: '@berth/host',
  source: path.join(here, 'berth-loop-detach.c'),
  target: path.resolve(here, '../../dist/berth-loop-detach'),
  without: 'a loop detach checks for holders with fuser and detaches with losetup',
  werror: true,
});
