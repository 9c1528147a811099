import { describe, expect, it } from 'vitest';
import { PLUGIN_API_VERSION, silentLogger, type ConnectionInfo, type TransportFactory } from '@berth/core';
import { createHostServices } from '@berth/host';
import plugin from './index.js';

const CONNECTION: ConnectionInfo = { driver_volume_type: 'iscsi', data: { target_portal: '127.0.0.1:3260', target_iqn: 'iqn.2026-01.test:v', target_lun: 1 } };

describe('the driver-iscsi-multipath plugin descriptor', () => {
  it('registers the iscsi-multipath transport, above the single-path one, only when multipath is asked for', () => {
    expect(plugin.name).toBe('@berth/driver-iscsi-multipath');
    expect(plugin.apiVersion).toBe(PLUGIN_API_VERSION);
    const transports = new Map<string, TransportFactory>();
    plugin.register({
      transport: (name, factory) => transports.set(name, factory as TransportFactory),
      backend: () => {
        throw new Error('the plugin registers no backend');
      },
      consumer: () => {
        throw new Error('the plugin registers no consumer');
      },
    });
    expect([...transports.keys()]).toEqual(['iscsi-multipath']);
    const driver = transports.get('iscsi-multipath')?.({ host: createHostServices(), dataDir: '/nonexistent', options: {}, logger: silentLogger });
    expect(driver?.name).toBe('iscsi-multipath');
    expect(driver?.protocols).toEqual(['iscsi']);
    expect(driver?.priority).toBeGreaterThan(0);
    expect(driver?.accepts?.(CONNECTION, { host: 'h', multipath: true })).toBe(true);
    expect(driver?.accepts?.(CONNECTION, { host: 'h', multipath: false })).toBe(false);
    expect(driver?.accepts?.(CONNECTION, { host: 'h' })).toBe(false);
  });

  it('fills option defaults and refuses bad options', () => {
    expect(plugin.optionsSchema?.parse({})).toMatchObject({
      startup: 'automatic',
      portalTimeoutMs: 15_000,
      loginTimeoutSeconds: 5,
      loginRetryMax: 2,
      enforceMultipath: false,
      discoveryMode: 'nonpersistent',
      discoveryTargets: 'same-iqn',
      targetLockTimeoutMs: 300_000,
      iface: 'default',
    });
    expect(plugin.optionsSchema?.safeParse({ startup: 'onboot' }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ portalTimeoutMs: 0 }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ discoveryMode: 'sometimes' }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ iface: 'bad iface' }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ targetLockTimeoutMs: 50 }).success).toBe(false);
  });
});
