// Build step of @berth/driver-loop: compile its C program into dist/ (see the README). Without it
// the driver does what it does with losetup, as before:
// - berth-loop-attach (berth-loop-attach.c): a connect in one process instead of three losetup runs.
// (berth-loop-detach, a disconnect that leaves a busy device untouched, is @berth/host's.)
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileNative } from '@berth/host/native-build';

const here = path.dirname(fileURLToPath(import.meta.url));
const programs = [
  { name: 'berth-loop-attach', without: 'a connect lists and attaches with losetup' },
];
for (const { name, without } of programs) {
  compileNative({
    pkg: '@berth/driver-loop',
    source: path.join(here, `${name}.c`),
    target: path.resolve(here, `../../dist/${name}`),
    without,
    werror: true,
  });
}
