// Build step of @berth/driver-loop: compile berth-loop-detach (berth-loop-detach.c) into
// dist/berth-loop-detach. Without it a disconnect checks for holders with `fuser` and detaches
// with `losetup --detach`, as before.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileNative } from '@berth/host/native-build';

const here = path.dirname(fileURLToPath(import.meta.url));
compileNative({
  pkg: '@berth/driver-loop',
  source: path.join(here, 'berth-loop-detach.c'),
  target: path.resolve(here, '../../dist/berth-loop-detach'),
  without: 'a disconnect checks for holders with fuser and detaches with losetup',
  werror: true,
});
