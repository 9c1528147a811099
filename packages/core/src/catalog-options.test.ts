import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { HostServices } from '@berth/host';
import { DriverCatalog } from './catalog.js';
import type { TransportDriver } from './contracts/transport-driver.js';
import { silentLogger } from './logger.js';
import { definePlugin, PLUGIN_API_VERSION } from './plugin.js';
import { stubHostFs } from './test-support.js';

/** A catalog with one plugin whose transport `t` records the options it was built with. */
function catalogWith(schema: z.ZodType, pluginOptions: Record<string, Record<string, unknown>>, acceptsNoOptions: boolean) {
  const seen: unknown[] = [];
  const transport: TransportDriver = {
    name: 't',
    protocols: ['file'],
    connectorProperties: async () => ({}),
    connect: async () => ({ path: '/dev/null', type: 'block' }),
    disconnect: async () => undefined,
    check: async () => ({ ok: true, summary: 't' }),
  };
  const plugin = definePlugin({
    name: 'opts',
    apiVersion: PLUGIN_API_VERSION,
    optionsSchema: schema,
    register: (r) => r.transport('t', (context) => (seen.push(context.options), transport)),
  });
  const catalog = new DriverCatalog({ fs: stubHostFs() } as unknown as HostServices, '/tmp', silentLogger, pluginOptions);
  catalog.add({ plugin, packageName: 'opts', version: undefined, options: undefined }, { acceptsNoOptions });
  return { catalog, seen };
}

describe('DriverCatalog.add with acceptsNoOptions', () => {
  const zOptions = z.object({ retries: z.number().int().default(3) });

  it('gives the plugin its parsed defaults when it is first used', () => {
    const { catalog, seen } = catalogWith(zOptions, {}, true);
    expect(catalog.plugins().loaded.map((p) => p.name)).toEqual(['opts']);
    catalog.transport('t');
    expect(seen).toEqual([{ retries: 3 }]);
  });

  it('still reports options given in the config that the schema refuses, at add', () => {
    const { catalog } = catalogWith(zOptions, { opts: { retries: 'many' } }, true);
    expect(catalog.plugins().failed).toEqual([{ packageName: 'opts', error: expect.stringMatching(/^invalid options for opts: retries/) }]);
    // Asked for, its transport is "not installed": the hint says which plugin failed to load, and why.
    let refused: unknown;
    try {
      catalog.transport('t');
    } catch (error) {
      refused = error;
    }
    expect(refused).toMatchObject({ code: 'UNPROCESSABLE', message: 'no transport named t is installed' });
    expect((refused as { hint?: string }).hint).toMatch(/a plugin failed to load \(`berth plugins`\): opts: invalid options for opts: retries/);
  });

  it('fails the first use with PLUGIN_ERROR when the schema needs options after all', () => {
    const { catalog } = catalogWith(z.object({ portal: z.string() }), {}, true);
    expect(() => catalog.transport('t')).toThrow(expect.objectContaining({ code: 'PLUGIN_ERROR', message: expect.stringMatching(/^invalid options for opts: portal/) }));
  });
});
