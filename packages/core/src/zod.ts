/**
 * zod, for every berth package and plugin: `import { z } from '@berth/core/zod'`.
 *
 * The same zod as the `zod` package (its whole public API, `z` included), but in the build it is
 * one file inside core's bundle (scripts/bundle.mjs) instead of zod's ~75 modules: importing
 * `zod` by name cost a berth process ~60 ms of Node's module loader on the shared 2-core machine,
 * the file ~25 ms (apps/cli/README, "Start time"). And it is one copy: core's schemas, the
 * plugins' option schemas and `z.config` (the CLI's `jitless`) all meet in the same zod. A
 * package that imported `zod` by name would load the second copy beside it.
 */
export * from 'zod';
