import { describe, expect, it } from 'vitest';
import { BUILTIN_PLUGINS } from './builtin-plugins.js';

describe('BUILTIN_PLUGINS', () => {
  // buildCatalog registers them with `acceptsNoOptions`: without options in the config their
  // options are parsed only when the plugin is first used, so none may require one.
  it.each(BUILTIN_PLUGINS.map((builtin) => [builtin.plugin.name, builtin.plugin] as const))('%s accepts no options', (_name, plugin) => {
    expect(plugin.optionsSchema?.safeParse({}).success ?? true).toBe(true);
  });
});
