import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BerthError, silentLogger } from '@berth/core';
import { createHostServices } from '@berth/host';
import { scanAndWait, type LunTarget } from './lun-device.js';
import { toPortal } from './target.js';
import { buildSessions } from './test-kernel-tree.js';

const IQN = 'iqn.2026-01.test.berth:vol1';
const TARGET: LunTarget = { iqn: IQN, portal: toPortal('127.0.0.1:3260'), portalText: '127.0.0.1:3260', lun: 1, kernelLun: 1 };

let root: string;
beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'berth-iscsi-lun-device-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** scanAndWait on the fake tree for LUN 1 of session 1, whose disk never comes; the error it ends with. */
async function timeoutOf(): Promise<BerthError> {
  const host = createHostServices({ root });
  const outcome = await scanAndWait({ ...host, logger: silentLogger }, TARGET, { sid: 1, hostNumber: 2 }, {
    timeoutMs: 150,
    attempts: 1,
    signal: new AbortController().signal,
    transport: 'iscsi',
  }).then(
    () => undefined,
    (error: unknown) => error,
  );
  expect(outcome).toBeInstanceOf(BerthError);
  return outcome as BerthError;
}

describe('a LUN whose disk does not come (scanAndWait)', () => {
  it('times out sending the user to the export when the session is up', async () => {
    await buildSessions(root, [{ host: 2, sid: 1, iqn: IQN, address: '127.0.0.1', port: 3260, luns: [] }]);
    const error = await timeoutOf();
    expect(error.code).toBe('TIMEOUT');
    expect(error.message).toMatch(/^LUN 1 of iqn\.2026-01\.test\.berth:vol1 did not appear as a block device within 150 ms \(1 scan\(s\) of session 1\)$/);
    expect(error.hint).toMatch(/exports this LUN/);
  });

  it('says the target stopped answering when the session lost its connection meanwhile (state FAILED)', async () => {
    await buildSessions(root, [{ host: 2, sid: 1, iqn: IQN, address: '127.0.0.1', port: 3260, state: 'FAILED', luns: [] }]);
    const error = await timeoutOf();
    expect(error.code).toBe('TIMEOUT');
    expect(error.message).toMatch(/did not appear as a block device within 150 ms .*: the session lost its connection to the target \(state FAILED/);
    expect(error.hint).toMatch(/target at 127\.0\.0\.1:3260 is running and reachable/);
    expect(error.details).toMatchObject({ sessionState: 'FAILED' });
  });

  it('says the session is gone when it went away during the wait', async () => {
    await buildSessions(root, [{ host: 2, sid: 1, iqn: IQN, address: '127.0.0.1', port: 3260, luns: [] }]);
    // the scan is written into the session's host; then the session's class entry goes
    await rm(path.join(root, 'sys/class/iscsi_session/session1'), { force: true });
    const error = await timeoutOf();
    expect(error.message).toMatch(/: the session is gone/);
  });

  it('says a FREE session\'s recovery timed out, and keeps the plain message once it reads LOGGED_IN again', async () => {
    await buildSessions(root, [{ host: 2, sid: 1, iqn: IQN, address: '127.0.0.1', port: 3260, state: 'FREE', luns: [] }]);
    const stateFile = path.join(root, 'sys/class/iscsi_session/session1/state');
    expect((await timeoutOf()).message).toMatch(/recovery timed out \(state FREE\)/);
    await writeFile(stateFile, 'LOGGED_IN\n');
    expect((await timeoutOf()).message).not.toMatch(/: the session/);
  });
});
