// Build step of @berth/driver-loop: compile its C programs into dist/ (see the README). Without
// them the driver does what they do with losetup (and fuser), as before:
// - berth-loop-detach (berth-loop-detach.c): a disconnect that leaves a busy device untouched;
// - berth-loop-attach (berth-loop-attach.c): a connect in one process instead of three losetup runs.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileNative } from '@berth/host/native-build';

const here = path.dirname(fileURLToPath(import.meta.url));
const programs = [
  { name: 'berth-loop-detach', without: 'a disconnect checks for holders with fuser and detaches with losetup' },
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
