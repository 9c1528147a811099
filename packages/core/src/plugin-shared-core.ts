import { register } from 'node:module';

/** The packages a plugin imports from the berth that runs it, never from its own node_modules. */
export const SHARED_PACKAGES: readonly string[] = ['@berth/core', '@berth/host'];

let registered = false;

/**
 * Make every later `import '@berth/core'` (and `@berth/host`) in this process resolve to the running
 * berth's copy, whatever directory the importing plugin was installed in. Called by the loader before
 * it imports the first plugin; registering twice is a no-op. Returns whether the hook is in place:
 * it is not when core runs from its TypeScript sources (the test runner), where Node cannot load the
 * `.js` hook module; plugins then resolve core as Node would, and `BerthError.is` still recognises
 * errors from another copy.
 */
export function shareCoreWithPlugins(): boolean {
  if (registered) return true;
  const hook = new URL('./plugin-resolve-hook.js', import.meta.url);
  if (!import.meta.url.endsWith('.js')) return false;
  // Resolving a package's own name from a module inside it ("self-reference") reaches this copy of
  // core through its package.json `exports`; @berth/host is core's dependency, found from here too.
  register(hook, { data: { coreUrl: import.meta.url, packages: [...SHARED_PACKAGES] } });
  registered = true;
  return true;
}
