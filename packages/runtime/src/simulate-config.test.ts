import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BerthError, silentLogger } from '@berth/core';
import { describe, expect, it } from 'vitest';
import { loadConfigs } from './open-berth.js';
import { simulatedHostServices } from './simulate.js';
import { resolveSimulateConfig, splitSimulateSection } from './simulate-config.js';

describe('the simulate section of the config', () => {
  it('is runtime\'s own: taken out of the file before core validates the rest', () => {
    expect(splitSimulateSection({ logLevel: 'info', simulate: { enabled: true } })).toEqual({ rest: { logLevel: 'info' }, section: { enabled: true } });
    expect(splitSimulateSection({ logLevel: 'info' })).toEqual({ rest: { logLevel: 'info' }, section: undefined });
    expect(splitSimulateSection(undefined)).toEqual({ rest: undefined, section: undefined });
  });

  it('defaults to off, the iSCSI transports, a root and work dir under the data dir, and @berth/simhost', () => {
    expect(resolveSimulateConfig(undefined, {}, '/data')).toEqual({
      enabled: false,
      plugins: ['@berth/driver-iscsi', '@berth/driver-iscsi-multipath'],
      root: '/data/simhost',
      workDir: '/data/simhost-work',
      module: '@berth/simhost',
    });
  });

  it('is switched by the file, then BERTH_SIMULATE, then the caller (--simulate)', () => {
    expect(resolveSimulateConfig({ enabled: true }, {}, '/d').enabled).toBe(true);
    expect(resolveSimulateConfig({ enabled: true }, { BERTH_SIMULATE: '0' }, '/d').enabled).toBe(false);
    expect(resolveSimulateConfig(undefined, { BERTH_SIMULATE: 'yes' }, '/d').enabled).toBe(true);
    expect(resolveSimulateConfig(undefined, { BERTH_SIMULATE: '1' }, '/d', false).enabled).toBe(false);
    const custom = resolveSimulateConfig({ plugins: ['my-nvme-transport'], root: 'sim', deviceDelayMs: 0 }, {}, '/d');
    expect([custom.plugins, custom.root, custom.deviceDelayMs]).toEqual([['my-nvme-transport'], '/d/sim', 0]);
  });

  it('refuses what it does not know, naming the section', () => {
    expect(() => resolveSimulateConfig({ enable: true }, {}, '/d')).toThrow(/simulate/);
    expect(() => resolveSimulateConfig({ plugins: 'all' }, {}, '/d')).toThrow(BerthError);
  });

  it('is read from the config file with core\'s config beside it', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'berth-simcfg-'));
    try {
      await writeFile(path.join(dir, 'config.json'), JSON.stringify({ logLevel: 'error', simulate: { plugins: ['x'] } }));
      const { config, simulate } = await loadConfigs({ dataDir: dir, env: {} });
      expect(config.logLevel).toBe('error');
      expect([simulate.enabled, simulate.plugins, simulate.root]).toEqual([false, ['x'], path.join(dir, 'simhost')]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('says how to get the simulated host when its package is not installed', async () => {
    const simulate = resolveSimulateConfig({ enabled: true, module: '@berth/no-such-simhost' }, {}, '/nonexistent');
    const error = await simulatedHostServices(simulate, { commandTimeoutMs: 1_000, logger: silentLogger }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BerthError);
    expect((error as BerthError).code).toBe('CONFIG');
    expect((error as BerthError).message).toContain('@berth/no-such-simhost');
    expect((error as BerthError).hint).toMatch(/npm install @berth\/no-such-simhost/);
  });
});
