import { describe, expect, it } from 'vitest';
import type { HostServices } from '@berth/host';
import { DriverCatalog } from './catalog.js';
import type { ConnectionInfo } from './connection.js';
import type { TransportDriver } from './contracts/transport-driver.js';
import { BerthError } from './errors.js';
import { silentLogger } from './logger.js';
import { definePlugin, PLUGIN_API_VERSION } from './plugin.js';

function fake(name: string, protocols: string[], priority: number, accepts: boolean): TransportDriver {
  return {
    name,
    protocols,
    priority,
    accepts: () => accepts,
    connectorProperties: async () => ({}),
    connect: async () => ({ path: '/dev/null', type: 'block' }),
    disconnect: async () => undefined,
    check: async () => ({ ok: true, summary: name }),
  };
}

function catalogWith(...drivers: TransportDriver[]): DriverCatalog {
  const catalog = new DriverCatalog({ fs: { resolve: (p: string) => p } } as unknown as HostServices, '/tmp', silentLogger);
  catalog.add({
    plugin: definePlugin({ name: 'fakes', apiVersion: PLUGIN_API_VERSION, register: (r) => drivers.forEach((d) => r.transport(d.name, () => d)) }),
    packageName: 'fakes',
    version: undefined,
    options: undefined,
  });
  return catalog;
}

const iscsi: ConnectionInfo = { driver_volume_type: 'iscsi', data: {} };

describe('DriverCatalog.selectTransport', () => {
  const catalog = catalogWith(fake('iscsi', ['iscsi'], 0, true), fake('iscsi-user', ['iscsi'], 5, false), fake('loop', ['file'], 0, true));

  it('picks the highest priority among those that accept', () => {
    expect(catalog.selectTransport(iscsi, { host: 'h' }).name).toBe('iscsi');
  });

  it('uses a forced transport without asking it to accept', () => {
    expect(catalog.selectTransport(iscsi, { host: 'h' }, 'iscsi-user').name).toBe('iscsi-user');
  });

  it('refuses a forced transport that does not connect the protocol, or is not installed', () => {
    const wrong = (() => {
      try {
        catalog.selectTransport(iscsi, { host: 'h' }, 'loop');
      } catch (error) {
        return error;
      }
    })();
    expect(BerthError.is(wrong) && wrong.code).toBe('UNPROCESSABLE');
    expect((wrong as BerthError).hint).toContain('iscsi-user');
    expect(() => catalog.selectTransport(iscsi, { host: 'h' }, 'nope')).toThrow(/no transport named nope/);
  });
});
