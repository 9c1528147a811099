import { describe, expect, it } from 'vitest';
import { PLUGIN_API_VERSION, type TransportFactory } from '@berth/core';
import plugin from './index.js';

describe('the driver-loop plugin descriptor', () => {
  it('registers the loop transport and nothing else', () => {
    expect(plugin.apiVersion).toBe(PLUGIN_API_VERSION);
    const transports = new Map<string, TransportFactory>();
    plugin.register({
      transport: (name, factory) => transports.set(name, factory as TransportFactory),
      backend: () => {
        throw new Error('the loop plugin registers no backend');
      },
      consumer: () => {
        throw new Error('the loop plugin registers no consumer');
      },
    });
    expect([...transports.keys()]).toEqual(['loop']);
  });

  it('fills option defaults and refuses bad options', () => {
    expect(plugin.optionsSchema?.parse({})).toEqual({ directIo: 'auto', deviceTimeoutMs: 10_000, commandTimeoutMs: 15_000, holderGraceMs: 3_000, nativeDetach: 'auto', nativeAttach: 'auto' });
    expect(plugin.optionsSchema?.safeParse({ nativeAttach: 'on' }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ directIo: 'sometimes' }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ deviceTimeoutMs: -1 }).success).toBe(false);
    expect(plugin.optionsSchema?.safeParse({ holderGraceMs: -1 }).success).toBe(false);
  });
});
