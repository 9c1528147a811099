import { describe, expect, it } from 'vitest';
import { BerthError } from './errors.js';
import { resolveConfig } from './config.js';

describe('resolveConfig', () => {
  it('fills defaults', () => {
    const config = resolveConfig(undefined, {}, { dataDir: '/d' });
    expect(config).toMatchObject({ dataDir: '/d', hostRoot: '/', defaultBackend: 'file', consumer: 'host', store: { kind: 'sqlite' } });
  });

  it('lets the environment win over the file, and overrides win over both', () => {
    const config = resolveConfig(
      { dataDir: '/file', defaultBackend: 'tgt', operationTimeoutMs: 5000 },
      { BERTH_DEFAULT_BACKEND: 'env', BERTH_OPERATION_TIMEOUT_MS: '7000', BERTH_FAULTS: 'attach.connect.after=crash' },
      { dataDir: '/override' },
    );
    expect(config.dataDir).toBe('/override');
    expect(config.defaultBackend).toBe('env');
    expect(config.operationTimeoutMs).toBe(7000);
    expect(config.faults).toEqual({ 'attach.connect.after': 'crash' });
  });

  it('rejects unknown keys and bad values with every problem named', () => {
    let error: unknown;
    try {
      resolveConfig({ dataDir: '/d', nope: 1, operationTimeoutMs: -1 }, {});
    } catch (e) {
      error = e;
    }
    expect(BerthError.is(error) && error.code).toBe('CONFIG');
    expect(String((error as Error).message)).toMatch(/nope/);
    expect(String((error as Error).message)).toMatch(/operationTimeoutMs/);
  });

  it('takes a PostgreSQL store from BERTH_STORE_URL (over the file) and refuses a store URL that is not PostgreSQL', () => {
    const config = resolveConfig({ store: { kind: 'sqlite' } }, { BERTH_STORE_URL: 'postgres://berth@db:5432/berth' }, { dataDir: '/d' });
    expect(config.store).toEqual({ kind: 'postgres', url: 'postgres://berth@db:5432/berth' });
    let error: unknown;
    try {
      resolveConfig({ store: { kind: 'postgres', url: 'mysql://root:hunter2@db/berth' } }, {}, { dataDir: '/d' });
    } catch (e) {
      error = e;
    }
    expect(BerthError.is(error) && error.code).toBe('CONFIG');
    expect(String((error as Error).message)).toMatch(/store\.url/);
    expect(String((error as Error).message)).not.toMatch(/hunter2/);
  });

  it('lets an agent token name its host (RFC 1123) and refuses a host on another role; agent and replica leases have defaults', () => {
    const sha256 = 'a'.repeat(64);
    const config = resolveConfig({ api: { tokens: [{ name: 'h3', sha256, role: 'agent', host: 'h-3.example' }] } }, {}, { dataDir: '/d' });
    expect(config.api.tokens[0]?.host).toBe('h-3.example');
    expect(config.agent).toEqual({ leaseMs: 15_000, pollWaitMs: 25_000, offlineAfterMs: 45_000 });
    expect(config.replica).toEqual({ leaseMs: 6_000, heartbeatMs: 2_000 });
    const refused = (file: unknown): string => {
      try {
        resolveConfig(file, {}, { dataDir: '/d' });
      } catch (e) {
        return BerthError.is(e) ? `${e.code} ${e.message}` : 'other';
      }
      return 'accepted';
    };
    expect(refused({ api: { tokens: [{ name: 'a', sha256, role: 'admin', host: 'h-3' }] } })).toMatch(/CONFIG.*only an agent token names a host/);
    expect(refused({ api: { tokens: [{ name: 'a', sha256, role: 'agent', host: '-bad_host' }] } })).toMatch(/CONFIG.*RFC 1123/);
    expect(refused({ replica: { leaseMs: 2000, heartbeatMs: 1500 } })).toMatch(/CONFIG.*heartbeatMs/);
    // A healthy idle agent is heard from once per long-poll: a shorter offline bound would call it offline between polls.
    expect(refused({ agent: { offlineAfterMs: 30_000 } })).toMatch(/CONFIG.*agent\.offlineAfterMs: offlineAfterMs must be at least pollWaitMs \+ 10000/);
    expect(refused({ agent: { pollWaitMs: 10_000, offlineAfterMs: 20_000 } })).toBe('accepted');
    // Unset, it follows a long poll (a config that raised only pollWaitMs keeps loading).
    expect(resolveConfig({ agent: { pollWaitMs: 60_000 } }, {}, { dataDir: '/d' }).agent.offlineAfterMs).toBe(80_000);
    expect(resolveConfig({ agent: { pollWaitMs: 5_000 } }, {}, { dataDir: '/d' }).agent.offlineAfterMs).toBe(45_000);
  });

  describe('a bad config', () => {
    const failure = (run: () => unknown): BerthError => {
      try {
        run();
      } catch (e) {
        if (BerthError.is(e)) return e;
        throw e;
      }
      throw new Error('accepted');
    };

    it('is CONFIG, names the file and every bad key by its path, and says where to fix it', () => {
      const error = failure(() =>
        resolveConfig({ bogusKey: 1, operationTimeoutMs: -5, connector: { multipath: 'yes', extra: true } }, {}, { dataDir: '/d' }, { file: '/etc/berth/c.json' }),
      );
      expect(error.code).toBe('CONFIG');
      expect(error.message).toMatch(/^invalid config file \/etc\/berth\/c\.json: /);
      expect(error.message).toContain('bogusKey: unknown key');
      expect(error.message).toContain('operationTimeoutMs: must be greater than 0');
      expect(error.message).toContain('connector.multipath: must be a boolean, not a string');
      expect(error.message).toContain('connector.extra: unknown key');
      expect(error.hint).toMatch(/^fix or remove .*bogusKey.* in \/etc\/berth\/c\.json/);
      expect(error.details['issues']).toContainEqual({ path: ['bogusKey'], message: 'unknown key', source: 'config file /etc/berth/c.json' });
    });

    it('says which values came from the environment or an option, never the values themselves', () => {
      const error = failure(() =>
        resolveConfig(
          { logLevel: 'loud' },
          { BERTH_OPERATION_TIMEOUT_MS: 'soon', BERTH_STORE_URL: 'mysql://root:hunter2@db/berth' },
          { dataDir: '/d' },
          { file: '/c.json' },
        ),
      );
      expect(error.code).toBe('CONFIG');
      expect(error.message).toContain('invalid config file /c.json: logLevel: must be one of trace, debug');
      expect(error.message).toContain('invalid BERTH_OPERATION_TIMEOUT_MS: operationTimeoutMs: must be a number');
      expect(error.message).toContain('invalid BERTH_STORE_URL: store.url: must be a postgres://');
      expect(error.hint).toContain('fix or unset BERTH_STORE_URL');
      expect(error.hint).toContain('fix or remove logLevel in /c.json');
      expect(JSON.stringify(error.toJSON())).not.toMatch(/hunter2|soon|loud/);

      const option = failure(() =>
        resolveConfig({}, {}, { dataDir: '/d', store: { kind: 'postgres', url: 'mysql://root:hunter2@db/berth' } }, { overrides: { store: '--store' } }),
      );
      expect(option.message).toMatch(/^invalid --store: store\.url: /);
      expect(option.hint).toBe('fix --store');
      expect(JSON.stringify(option.toJSON())).not.toContain('hunter2');
    });

    it('is CONFIG when the file is not a JSON object', () => {
      const error = failure(() => resolveConfig([1, 2], {}, { dataDir: '/d' }, { file: '/c.json' }));
      expect(error.code).toBe('CONFIG');
      expect(error.message).toContain('/c.json');
    });
  });
});
