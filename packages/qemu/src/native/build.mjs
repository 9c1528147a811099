// Build step of @berth/qemu: compile berth-loop-detach (berth-loop-detach.c, the same program as
// @berth/driver-loop's; see the README) into dist/. Without it `detachFuseLoop` looks for holders
// first (holders/, mounts, fuser) and detaches with losetup, as before.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileNative } from '@berth/host/native-build';

const here = path.dirname(fileURLToPath(import.meta.url));
compileNative({
  pkg: '@berth/qemu',
  source: path.join(here, 'berth-loop-detach.c'),
  target: path.resolve(here, '../../dist/berth-loop-detach'),
  without: 'a FUSE loop detach looks for holders first (fuser) and detaches with losetup; a holder it cannot see makes the kernel detach the device at its last close',
  werror: true,
});
