import { describe, expect, it } from 'vitest';
import { IscsiadmClient } from './iscsiadm-client.js';
import { ReplayRunner } from './test-replay-runner.js';

// The client calls the single-LUN lifecycle added: one update with every key, SendTargets through
// a discovery record, and logins whose record already bounds iscsid's own retries. The outputs are
// KERNEL-MODEL §2 (synthesized: the recording machine had no iscsi_tcp).

const T = { iqn: 'iqn.2026-01.test.berth:vol1', portal: '127.0.0.1:3260' };
const FAST = { attempts: 3, baseDelayMs: 1, maxDelayMs: 2 };

describe('IscsiadmClient: batched and bounded calls', () => {
  it('nodeUpdateAll sets every key in one run, the passwords only as secrets; nothing runs for none', async () => {
    const runner = ReplayRunner.sequence([{ exitCode: 0 }]);
    const client = new IscsiadmClient({ runner, retry: FAST });
    await client.nodeUpdateAll(T, []);
    expect(runner.calls).toEqual([]);
    await client.nodeUpdateAll(T, [
      { key: 'node.session.scan', value: 'manual' },
      { key: 'node.session.auth.password', value: 'pw-secret' },
      { key: 'node.session.auth.username', value: 'u', secret: true },
    ]);
    expect(runner.calls).toHaveLength(1);
    expect(runner.calls[0]?.args).toEqual([
      '-m', 'node', '-T', T.iqn, '-p', T.portal, '--op', 'update',
      '-n', 'node.session.scan', '-v', 'manual',
      '-n', 'node.session.auth.password', '-v', 'pw-secret',
      '-n', 'node.session.auth.username', '-v', 'u',
    ]);
    expect(runner.calls[0]?.options.secrets).toEqual(['pw-secret', 'u']);
    expect(runner.calls[0]?.logged).not.toContain('pw-secret');
  });

  it('nodeUpdateAll refuses a value with a newline without running or echoing it', async () => {
    const runner = ReplayRunner.sequence([{ exitCode: 0 }]);
    const client = new IscsiadmClient({ runner, retry: FAST });
    const error = await client.nodeUpdateAll(T, [{ key: 'node.session.auth.password', value: 'a\nnode.startup = automatic' }]).catch((e: unknown) => e);
    expect(String(error)).not.toContain('automatic');
    expect(runner.calls).toEqual([]);
  });

  it('discoverydbDiscover runs --discover (nonpersistent by default) and reads the targets; rc 21 is none', async () => {
    const runner = ReplayRunner.sequence([
      { stdout: '127.0.0.1:3260,1 iqn.2026-01.test.berth:vol1\n127.0.0.2:3260,1 iqn.2026-01.test.berth:vol1\n' },
      { exitCode: 21, stderr: 'iscsiadm: No portals found\n' },
    ]);
    const client = new IscsiadmClient({ runner, retry: FAST });
    const found = await client.discoverydbDiscover('127.0.0.1:3260', { secrets: ['pw'] });
    expect(found.map((t) => `${t.portal.host} ${t.iqn}`)).toEqual(['127.0.0.1 iqn.2026-01.test.berth:vol1', '127.0.0.2 iqn.2026-01.test.berth:vol1']);
    expect(runner.calls[0]?.args).toEqual(['-m', 'discoverydb', '-t', 'sendtargets', '-I', 'default', '-p', '127.0.0.1:3260', '--discover', '--op', 'nonpersistent']);
    expect(runner.calls[0]?.options.secrets).toEqual(['pw']);
    expect(await client.discoverydbDiscover('127.0.0.1:3260', { persistent: true })).toEqual([]);
    expect(runner.calls[1]?.args.includes('nonpersistent')).toBe(false);
  });

  it('a login that timed out on the network is not run again when the record bounds iscsid\'s retries; a missing iscsid still is', async () => {
    const unreachable = { exitCode: 8, stderr: 'iscsiadm: initiator reported error (8 - connection timed out)\niscsiadm: Could not log into all portals\n' };
    const runner = ReplayRunner.sequence([unreachable]);
    const client = new IscsiadmClient({ runner, retry: FAST });
    await expect(client.login(T, { retryConnectionFailures: false })).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(runner.calls).toHaveLength(1);
    await expect(client.login(T)).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(runner.calls).toHaveLength(4);
    const noIscsid = ReplayRunner.sequence([{ exitCode: 20, stderr: 'iscsiadm: can not connect to iSCSI daemon (111)!\n' }, { exitCode: 0 }]);
    expect(await new IscsiadmClient({ runner: noIscsid, retry: FAST }).login(T, { retryConnectionFailures: false })).toBe('logged-in');
    expect(noIscsid.calls).toHaveLength(2);
  });
});
