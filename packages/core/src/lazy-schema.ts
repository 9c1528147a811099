import { z } from 'zod';

/**
 * A schema built on first use: a real `z.lazy` (stable identity, every zod method, the same
 * inferred types) whose builder runs once. berth's modules define ~150 schemas and a command uses a
 * few; building them all at import was the largest part of the CLI's start (apps/cli README,
 * "Start time"). `.unwrap()` gives the built schema, for `.extend`, `.pick`, `.shape` and `.options`.
 */
export function lazySchema<T extends z.ZodType>(build: () => T): z.ZodLazy<T> {
  let built: T | undefined;
  // zod calls the getter itself more than once (`unwrap()`, toJSONSchema's transform check): memoise it.
  return z.lazy(() => (built ??= build()));
}
