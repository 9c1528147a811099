// A module resolve hook that runs in Node's loader thread (registered by `shareCoreWithPlugins`):
// every `import '@berth/core'` (or `@berth/host`, or a subpath of either) is resolved as if it were
// written inside the running berth's own @berth/core, so a plugin installed anywhere — in oclif's
// data dir by `berth plugins install`, with or without a copy of core of its own — gets the one
// BerthError class and the one definePlugin of the berth that loads it. It imports nothing: the
// loader thread should start fast.
import type { InitializeHook, ResolveHook } from 'node:module';

/** What `shareCoreWithPlugins` hands the hook. */
export interface SharedResolutionData {
  /** URL of a module inside the running @berth/core (its `package.json` scope decides). */
  coreUrl: string;
  /** Bare package names resolved from the running core: `@berth/core`, `@berth/host`. */
  packages: string[];
}

let data: SharedResolutionData | undefined;

/** Receives the running core's URL from the thread that registered the hook. */
export const initialize: InitializeHook<SharedResolutionData> = (received) => {
  data = received;
};

/** Resolve the shared packages from the running core; everything else as Node would. */
export const resolve: ResolveHook = (specifier, context, nextResolve) => {
  const shared = data?.packages.some((name) => specifier === name || specifier.startsWith(`${name}/`));
  if (data !== undefined && shared === true) return nextResolve(specifier, { ...context, parentURL: data.coreUrl });
  return nextResolve(specifier, context);
};
