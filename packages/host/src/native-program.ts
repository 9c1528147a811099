import { accessSync, constants as fsConstants } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * The first of `places` that is an executable (a C program a package built into its `dist/`);
 * undefined when the build made none (no C compiler: the package has its fallback).
 */
export function nativeProgram(places: readonly URL[]): string | undefined {
  return places
    .map((url) => fileURLToPath(url))
    .find((file) => {
      try {
        accessSync(file, fsConstants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
}

/**
 * berth-loop-detach (`src/native/berth-loop-detach.c`): detach a loop device only when nobody else
 * holds it, leaving a held one attached as it was (see the C source). The loop transport runs it,
 * and `@berth/qemu`'s FUSE loop detach can (not its default), so it lives here, beside this module in `dist/` (this
 * package is never bundled: the CLI bundle imports it from its own location). Undefined when the
 * build made none.
 */
export const LOOP_DETACH_PROGRAM: string | undefined = nativeProgram([new URL('./berth-loop-detach', import.meta.url), new URL('../dist/berth-loop-detach', import.meta.url)]);
