import { describe, expect, it } from 'vitest';
import type { HostServices } from '@berth/host';
import { DriverCatalog } from './catalog.js';
import type { ConnectionInfo } from './connection.js';
import type { TransportDriver } from './contracts/transport-driver.js';
import { BerthError } from './errors.js';
import { silentLogger } from './logger.js';
import { definePlugin, PLUGIN_API_VERSION } from './plugin.js';
import { stubHostFs } from './test-support.js';

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
  const catalog = new DriverCatalog({ fs: stubHostFs() } as unknown as HostServices, '/tmp', silentLogger);
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

describe('DriverCatalog.selectAgentTransport (a host whose berth agent runs its steps)', () => {
  // This process has iscsi, iscsi-user and loop; the agents below have their own sets.
  const catalog = catalogWith(fake('iscsi', ['iscsi'], 0, true), fake('iscsi-user', ['iscsi'], 5, true), fake('loop', ['file'], 0, true));
  const refusal = (fn: () => unknown): BerthError => {
    try {
      fn();
    } catch (error) {
      if (BerthError.is(error)) return error;
      throw error;
    }
    throw new Error('expected a BerthError');
  };

  it("chooses among the agent's transports, not this process's", () => {
    // iscsi-user wins here by priority, but h-3's agent has only iscsi.
    expect(catalog.selectTransport(iscsi, { host: 'h' }).name).toBe('iscsi-user');
    expect(catalog.selectAgentTransport(iscsi, { host: 'h' }, { hostName: 'h-3', transports: ['iscsi', 'loop'] })).toBe('iscsi');
    expect(catalog.selectAgentTransport(iscsi, { host: 'h' }, { hostName: 'h-3', transports: ['iscsi', 'iscsi-user'] })).toBe('iscsi-user');
  });

  it('takes a forced transport installed on the agent only', () => {
    expect(catalog.selectAgentTransport(iscsi, { host: 'h' }, { hostName: 'h-3', transports: ['iscsi-rdma'] }, 'iscsi-rdma')).toBe('iscsi-rdma');
    // Known here too: it must connect the protocol.
    expect(refusal(() => catalog.selectAgentTransport(iscsi, { host: 'h' }, { hostName: 'h-3', transports: ['loop'] }, 'loop')).code).toBe('UNPROCESSABLE');
  });

  it('chooses a transport installed on the agent only by what the agent registered of it (protocols, priority)', () => {
    const transportInfo = [
      { name: 'iscsi', protocols: ['iscsi'], priority: 0 },
      { name: 'iscsi-rdma', protocols: ['iscsi'], priority: 20 },
      { name: 'nvme-tcp', protocols: ['nvmeof'], priority: 50 },
    ];
    const agent = { hostName: 'h-3', transports: ['iscsi', 'iscsi-rdma', 'nvme-tcp'], transportInfo };
    expect(catalog.selectAgentTransport(iscsi, { host: 'h' }, agent)).toBe('iscsi-rdma');
    // One this process knows is judged by this process's driver (its protocols and accepts), whatever the agent said.
    expect(catalog.selectAgentTransport(iscsi, { host: 'h' }, { ...agent, transports: ['iscsi', 'nvme-tcp'] })).toBe('iscsi');
    // An agent that named it without saying what it connects (an older agent): it has to be named.
    const older = refusal(() => catalog.selectAgentTransport(iscsi, { host: 'h' }, { hostName: 'h-3', transports: ['iscsi-rdma'] }));
    expect(older.code).toBe('CONFIG');
    expect(refusal(() => catalog.selectAgentTransport(iscsi, { host: 'h' }, { ...agent, transports: ['nvme-tcp'] })).message).toBe(
      "host h-3's agent has no transport known to connect iscsi volumes (it has nvme-tcp)",
    );
  });

  it('refuses, naming the host, a transport the agent lacks (CONFIG)', () => {
    const forced = refusal(() => catalog.selectAgentTransport(iscsi, { host: 'h' }, { hostName: 'h-3', transports: ['iscsi'] }, 'iscsi-user'));
    expect(forced.code).toBe('CONFIG');
    expect(forced.message).toBe("host h-3's agent has no transport iscsi-user (it has iscsi)");
    expect(forced.hint).toMatch(/install the plugin with transport iscsi-user on h-3/);
    const none = refusal(() => catalog.selectAgentTransport(iscsi, { host: 'h' }, { hostName: 'h-3', transports: ['loop'] }));
    expect(none.code).toBe('CONFIG');
    expect(none.message).toBe("host h-3's agent has no transport known to connect iscsi volumes (it has loop)");
    expect(none.details).toMatchObject({ host: 'h-3', agentTransports: ['loop'], driverVolumeType: 'iscsi' });
    // One this process does not know: the hint says how to name it.
    const unknown = refusal(() => catalog.selectAgentTransport(iscsi, { host: 'h' }, { hostName: 'h-3', transports: ['iscsi-rdma'] }));
    expect(unknown.hint).toMatch(/transports\.iscsi in this server's config, or --transport/);
  });
});
