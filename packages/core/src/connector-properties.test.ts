import { describe, expect, it } from 'vitest';
import type { Connector } from './connection.js';
import { mergeConnector } from './connector-properties.js';
import type { TransportDriver } from './contracts/transport-driver.js';
import { BerthError } from './errors.js';
import type { Logger } from './logger.js';

const base: Connector = { host: 'node-1', platform: 'x86_64', os_type: 'linux', multipath: false, enforce_multipath: false };

function transport(name: string, properties: () => Promise<Partial<Connector>>): TransportDriver {
  const refuse = (): never => {
    throw new BerthError('INTERNAL', 'not used here');
  };
  return { name, protocols: ['iscsi'], connectorProperties: properties, connect: refuse, disconnect: refuse, check: refuse };
}

function recordingLogger(): { logger: Logger; warnings: Array<Record<string, unknown>> } {
  const warnings: Array<Record<string, unknown>> = [];
  const logger: Logger = {
    debug: () => undefined,
    info: () => undefined,
    warn: (obj) => warnings.push(obj),
    error: () => undefined,
    child: () => logger,
  };
  return { logger, warnings };
}

describe('mergeConnector', () => {
  it('merges every transport over the base, later transports winning', async () => {
    const { logger } = recordingLogger();
    const connector = await mergeConnector(
      base,
      [transport('a', async () => ({ initiator: 'iqn.a' })), transport('b', async () => ({ initiator: 'iqn.b', ip: '127.0.0.2' }))],
      { multipath: false, enforce_multipath: false },
      logger,
    );
    expect(connector).toMatchObject({ host: 'node-1', initiator: 'iqn.b', ip: '127.0.0.2' });
  });

  it('skips a transport whose properties fail, naming it in a warning', async () => {
    const { logger, warnings } = recordingLogger();
    const connector = await mergeConnector(
      base,
      [transport('broken', () => Promise.reject(new Error('cannot read /etc/iscsi/initiatorname.iscsi'))), transport('loop', async () => ({}))],
      { multipath: false, enforce_multipath: false },
      logger,
    );
    expect(connector.initiator).toBeUndefined();
    expect(connector.host).toBe('node-1');
    expect(warnings).toEqual([expect.objectContaining({ transport: 'broken', err: expect.stringContaining('initiatorname') })]);
  });

  it('asks every transport at once and still merges in catalog order', async () => {
    const { logger, warnings } = recordingLogger();
    const asked: string[] = [];
    let releaseSlow: () => void = () => undefined;
    const slow = new Promise<void>((resolve) => (releaseSlow = resolve));
    const merging = mergeConnector(
      base,
      [
        transport('slow', async () => {
          asked.push('slow');
          await slow;
          return { initiator: 'iqn.slow', ip: '127.0.0.3' };
        }),
        transport('throws', () => {
          asked.push('throws');
          throw new Error('not a promise');
        }),
        transport('fast', async () => {
          asked.push('fast');
          return { initiator: 'iqn.fast' };
        }),
      ],
      { multipath: false, enforce_multipath: false },
      logger,
    );
    // The later transports were asked before the first one answered.
    await new Promise((resolve) => setImmediate(resolve));
    expect(asked).toEqual(['slow', 'throws', 'fast']);
    releaseSlow();
    const connector = await merging;
    // The fast transport answered first but comes later in the catalog: its answer wins.
    expect(connector).toMatchObject({ initiator: 'iqn.fast', ip: '127.0.0.3' });
    expect(warnings).toEqual([expect.objectContaining({ transport: 'throws', err: 'not a promise' })]);
  });

  it('keeps the multipath wish over what a transport says', async () => {
    const { logger } = recordingLogger();
    const connector = await mergeConnector(
      base,
      [transport('mp', async () => ({ multipath: false, enforce_multipath: false }))],
      { multipath: true, enforce_multipath: true },
      logger,
    );
    expect(connector.multipath).toBe(true);
    expect(connector.enforce_multipath).toBe(true);
  });
});
