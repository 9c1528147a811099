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
      loginTimeoutSeconds: 10,
      loginRetryMax: 2,
      loginRetries: 3,
      commandTimeoutMs: 30_000,
      targetLockTimeoutMs: 300_000,
      iface: 'default',
      holderGraceMs: 3_000,
    });
    expect(plugin.optionsSchema?.safeParse({ startup: 'onboot' }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ holderGraceMs: -1 }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ iface: 'bad iface' }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ loginRetries: -1 }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ deviceTimeoutMs: 0 }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ targetLockTimeoutMs: 0 }).success).toBe(false);
  });

  it('derives iscsid\'s login keys the user did not set to fit under the command timeout: a config valid before they existed still is', () => {
    const parse = (options: Record<string, unknown>): unknown => plugin.optionsSchema?.parse(options);
    // The defaults, 10 s × 2 = 20 s, fit under 30 s with the 5 s margin.
    expect(parse({})).toMatchObject({ loginTimeoutSeconds: 10, loginRetryMax: 2, commandTimeoutMs: 30_000 });
    // Shorter command timeouts: fewer seconds per attempt, then one attempt (was refused below 25 s).
    expect(parse({ commandTimeoutMs: 24_999 })).toMatchObject({ loginTimeoutSeconds: 9, loginRetryMax: 2 });
    expect(parse({ commandTimeoutMs: 15_000 })).toMatchObject({ loginTimeoutSeconds: 5, loginRetryMax: 2 });
    expect(parse({ commandTimeoutMs: 6_000 })).toMatchObject({ loginTimeoutSeconds: 1, loginRetryMax: 1 });
    // Below 6 s nothing fits with the whole margin: iscsid's smallest bound, still valid as before.
    expect(parse({ commandTimeoutMs: 3_000 })).toMatchObject({ loginTimeoutSeconds: 1, loginRetryMax: 1 });
    // One key set: the other one fits around it.
    expect(parse({ commandTimeoutMs: 20_000, loginTimeoutSeconds: 10 })).toMatchObject({ loginTimeoutSeconds: 10, loginRetryMax: 1 });
    expect(parse({ commandTimeoutMs: 30_000, loginRetryMax: 4 })).toMatchObject({ loginTimeoutSeconds: 6, loginRetryMax: 4 });
    // A long command timeout keeps the default pair (not raised to fill it).
    expect(parse({ commandTimeoutMs: 120_000 })).toMatchObject({ loginTimeoutSeconds: 10, loginRetryMax: 2 });
  });

  it('refuses login keys the user set that do not fit under the command timeout, naming the numbers', () => {
    expect(plugin.optionsSchema?.safeParse({ loginTimeoutSeconds: 10, loginRetryMax: 2, commandTimeoutMs: 25_000 }).success).toBe(true);
    const tooShort = plugin.optionsSchema?.safeParse({ loginTimeoutSeconds: 10, loginRetryMax: 2, commandTimeoutMs: 24_999 });
    expect(tooShort?.success).toBe(false);
    expect(tooShort?.error?.issues[0]).toMatchObject({
      path: ['commandTimeoutMs'],
      message: expect.stringMatching(/24999 ms is too short for loginTimeoutSeconds 10 and loginRetryMax 2: .*10 × 2 s = 20000 ms.*at least .*25000 ms/) as unknown,
    });
    // One key set that cannot fit even with the other at 1.
    const oneKey = plugin.optionsSchema?.safeParse({ loginTimeoutSeconds: 30 });
    expect(oneKey?.success).toBe(false);
    expect(oneKey?.error?.issues[0]?.message).toMatch(/30000 ms is too short for loginTimeoutSeconds 30: .*30 × 1 s = 30000 ms.*35000 ms/);
    // iscsid's 15 s × 8 (its iscsid.conf) needs a 125 s command timeout.
    expect(plugin.optionsSchema?.safeParse({ loginTimeoutSeconds: 15, loginRetryMax: 8 }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ loginTimeoutSeconds: 15, loginRetryMax: 8, commandTimeoutMs: 125_000 }).success).toBe(true);
  });
});
