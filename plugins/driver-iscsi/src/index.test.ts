import { describe, expect, it } from 'vitest';
import { PLUGIN_API_VERSION, silentLogger, type TransportFactory } from '@berth/core';
import { createHostServices } from '@berth/host';
import plugin from './index.js';

describe('the driver-iscsi plugin descriptor', () => {
  it('registers the iscsi transport for iscsi connections, and nothing else', () => {
    expect(plugin.name).toBe('@berth/driver-iscsi');
    expect(plugin.apiVersion).toBe(PLUGIN_API_VERSION);
    const transports = new Map<string, TransportFactory>();
    plugin.register({
      transport: (name, factory) => transports.set(name, factory as TransportFactory),
      backend: () => {
        throw new Error('the iscsi plugin registers no backend');
      },
      consumer: () => {
        throw new Error('the iscsi plugin registers no consumer');
      },
    });
    expect([...transports.keys()]).toEqual(['iscsi']);
    const driver = transports.get('iscsi')?.({ host: createHostServices(), dataDir: '/nonexistent', options: {}, logger: silentLogger });
    expect(driver?.name).toBe('iscsi');
    expect(driver?.protocols).toEqual(['iscsi']);
  });

  it('fills option defaults and refuses bad options', () => {
    expect(plugin.optionsSchema?.parse({})).toEqual({
      startup: 'automatic',
      deviceTimeoutMs: 30_000,
      scanAttempts: 3,
      loginTimeoutSeconds: 5,
      loginRetryMax: 4,
      loginRetries: 3,
      commandTimeoutMs: 30_000,
      targetLockTimeoutMs: 300_000,
      iface: 'default',
    });
    expect(plugin.optionsSchema?.safeParse({ startup: 'onboot' }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ iface: 'bad iface' }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ loginRetries: -1 }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ deviceTimeoutMs: 0 }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ targetLockTimeoutMs: 0 }).success).toBe(false);
  });

  it('keeps the command timeout above iscsid\'s bound on a login, whichever values the user set', () => {
    // 5 s × 4 = 20 s, plus the margin for iscsiadm to print iscsid's answer.
    expect(plugin.optionsSchema?.safeParse({ commandTimeoutMs: 25_000 }).success).toBe(true);
    const tooShort = plugin.optionsSchema?.safeParse({ commandTimeoutMs: 24_999 });
    expect(tooShort?.success).toBe(false);
    expect(tooShort?.error?.issues[0]).toMatchObject({ path: ['commandTimeoutMs'], message: expect.stringMatching(/at least 25000 ms.*20000 ms/) as unknown });
    // The user's own login keys count: iscsid's 15 s × 8 (its iscsid.conf) needs a 125 s command timeout.
    expect(plugin.optionsSchema?.safeParse({ loginTimeoutSeconds: 15, loginRetryMax: 8 }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ loginTimeoutSeconds: 15, loginRetryMax: 8, commandTimeoutMs: 125_000 }).success).toBe(true);
  });
});
