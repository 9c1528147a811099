import { describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { CommandError, type CommandResult, type CommandRunner } from '@berth/host';
import { IscsiadmClient, type IscsiadmClientOptions } from './iscsiadm-client.js';
import { IscsiadmError } from './iscsiadm-error.js';
import { MASKED_SECRET } from './record-parser.js';
import { readFixture } from '@berth/testkit/fixtures';
import { ReplayRunner, replyOf, type Reply } from './test-replay-runner.js';

const VOL1 = 'iqn.2026-01.test.berth:vol1';
const VOL2 = 'iqn.2026-01.test.berth:vol2';
const P1 = '127.0.0.1:3260';
const NODE1 = ['-m', 'node', '-T', VOL1, '-p', P1];
// Fast retries: the behaviour is the same, the test does not wait.
const FAST = { attempts: 3, baseDelayMs: 1, maxDelayMs: 2 };

function client(runner: CommandRunner, options: Partial<IscsiadmClientOptions> = {}): IscsiadmClient {
  return new IscsiadmClient({ runner, retry: FAST, ...options });
}

function replay(...fixtures: string[]): ReplayRunner {
  return ReplayRunner.fromFixtures(fixtures.map(readFixture));
}

async function caught(promise: Promise<unknown>): Promise<IscsiadmError> {
  try {
    await promise;
  } catch (error) {
    if (IscsiadmError.isIscsiadmError(error)) return error;
    throw error;
  }
  throw new Error('expected a failure');
}

describe('IscsiadmClient against recorded iscsiadm runs', () => {
  it('version: `iscsiadm --version`', async () => {
    const runner = replay('iscsiadm-version.txt');
    expect(await client(runner).version()).toBe('2.1.8');
    expect(runner.calls[0]?.args).toEqual(['--version']);
  });

  it('nodeShow: `-m node -T IQN -p PORTAL`, the parsed record; undefined on rc 21', async () => {
    const runner = replay('iscsiadm-node-show-after-chap.txt');
    const record = await client(runner).nodeShow({ iqn: VOL1, portal: P1 });
    expect(runner.calls.map((c) => c.args)).toEqual([NODE1]);
    expect(record?.['node.startup']).toBe('automatic');
    expect(record?.['node.session.auth.password']).toBe(MASKED_SECRET);

    const missing = replay('iscsiadm-node-show-missing.txt');
    expect(await client(missing).nodeShow({ iqn: VOL1, portal: { host: '127.0.0.1', port: 3260 } })).toBeUndefined();
    expect(missing.calls).toHaveLength(1);
  });

  it('nodeShow with showSecrets: `--op show --show`', async () => {
    const runner = replay('iscsiadm-node-show-after-chap-show-secrets.txt');
    const record = await client(runner).nodeShow({ iqn: VOL1, portal: P1 }, { showSecrets: true });
    expect(runner.calls[0]?.args).toEqual([...NODE1, '--op', 'show', '--show']);
    expect(record?.['node.session.auth.password']).toBe('SECRET');
  });

  it('nodeShowByPortal: `-m node --op show -p P`, every record at that portal; [] on rc 21', async () => {
    const runner = ReplayRunner.sequence([replyOf(readFixture('iscsiadm-node-show-target-all-portals.txt'))]);
    const records = await client(runner).nodeShowByPortal(P1);
    expect(runner.calls[0]?.args).toEqual(['-m', 'node', '--op', 'show', '-p', P1]);
    expect(records.map((r) => r['node.name'])).toEqual([VOL1, VOL1]);
    expect(await client(ReplayRunner.sequence([replyOf(readFixture('iscsiadm-node-show-missing.txt'))])).nodeShowByPortal(P1)).toEqual([]);
  });

  it('nodeNew: `--interface default --op new` (rc 0 despite the no-iscsid noise on stderr)', async () => {
    const runner = replay('iscsiadm-node-new.txt', 'iscsiadm-node-new-second-portal.txt');
    const c = client(runner);
    await c.nodeNew({ iqn: VOL1, portal: P1 });
    await c.nodeNew({ iqn: VOL1, portal: '127.0.0.2' }, 'default');
    expect(runner.calls.map((call) => call.args)).toEqual([
      [...NODE1, '--interface', 'default', '--op', 'new'],
      ['-m', 'node', '-T', VOL1, '-p', '127.0.0.2:3260', '--interface', 'default', '--op', 'new'],
    ]);
    // Over an existing CHAP record iscsiadm says `added` too (and resets it): rc 0, nothing to tell apart.
    const over = replay('iscsiadm-node-new-over-existing-chap-record.txt');
    await expect(client(over).nodeNew({ iqn: VOL1, portal: P1 })).resolves.toBeUndefined();
  });

  it('nodeUpdate: `--op update -n KEY -v VALUE` for each key os-brick sets', async () => {
    const runner = replay(
      'iscsiadm-node-update-authmethod.txt',
      'iscsiadm-node-update-username.txt',
      'iscsiadm-node-update-username-in.txt',
      'iscsiadm-node-update-startup-automatic.txt',
    );
    const c = client(runner);
    await c.nodeUpdate({ iqn: VOL1, portal: P1 }, 'node.session.auth.authmethod', 'CHAP');
    await c.nodeUpdate({ iqn: VOL1, portal: P1 }, 'node.session.auth.username', 'chapuser');
    await c.nodeUpdate({ iqn: VOL1, portal: P1 }, 'node.session.auth.username_in', 'chaptarget');
    await c.nodeUpdate({ iqn: VOL1, portal: P1 }, 'node.startup', 'automatic');
    expect(runner.calls.map((call) => call.args)).toEqual([
      [...NODE1, '--op', 'update', '-n', 'node.session.auth.authmethod', '-v', 'CHAP'],
      [...NODE1, '--op', 'update', '-n', 'node.session.auth.username', '-v', 'chapuser'],
      [...NODE1, '--op', 'update', '-n', 'node.session.auth.username_in', '-v', 'chaptarget'],
      [...NODE1, '--op', 'update', '-n', 'node.startup', '-v', 'automatic'],
    ]);
    expect(runner.calls.every((call) => (call.options.secrets ?? []).length === 0)).toBe(true);
  });

  it('nodeUpdate of a password: the value is in the argument array and in `secrets`, never in the logged line', async () => {
    // The recordings show the password as SECRET; the client passes that value as it would any.
    const runner = replay('iscsiadm-node-update-password.txt', 'iscsiadm-node-update-password-in.txt');
    const c = client(runner);
    await c.nodeUpdate({ iqn: VOL1, portal: P1 }, 'node.session.auth.password', 'SECRET');
    await c.nodeUpdate({ iqn: VOL1, portal: P1 }, 'node.session.auth.password_in', 'SECRET');
    for (const call of runner.calls) {
      expect(call.args.at(-1)).toBe('SECRET');
      expect(call.options.secrets).toEqual(['SECRET']);
      expect(call.logged).not.toContain('SECRET');
      expect(call.logged).toContain('-v ***');
    }
  });

  it('nodeUpdate with `secret: true` masks any key\'s value', async () => {
    const runner = ReplayRunner.sequence([{ exitCode: 0 }]);
    await client(runner).nodeUpdate({ iqn: VOL1, portal: P1 }, 'node.session.auth.username', 'private-user', { secret: true });
    expect(runner.calls[0]?.options.secrets).toEqual(['private-user']);
    expect(runner.calls[0]?.logged).not.toContain('private-user');
  });

  it('nodeUpdate failures are not retried: a missing record is NOT_FOUND, a bad key DRIVER_ERROR', async () => {
    const missing = replay('iscsiadm-node-update-missing.txt');
    const error = await caught(client(missing).nodeUpdate({ iqn: VOL1, portal: P1 }, 'node.startup', 'automatic'));
    expect(error).toMatchObject({ code: 'NOT_FOUND', iscsiadmExitCode: 21, errorName: 'NO_OBJS_FOUND', exitClass: 'fatal' });
    expect(missing.calls).toHaveLength(1);

    const badKey = replay('iscsiadm-node-update-bad-key.txt');
    const invalid = await caught(client(badKey).nodeUpdate({ iqn: VOL1, portal: P1 }, 'node.session.no_such_key', '1'));
    expect(invalid).toMatchObject({ code: 'DRIVER_ERROR', iscsiadmExitCode: 7, errorName: 'INVAL' });
    expect(invalid.message).toContain('Cannot modify node.session.no_such_key. Invalid param name.');
    expect(badKey.calls).toHaveLength(1);
  });

  it('nodeUpdate refuses a value that would write a second key, before running anything', async () => {
    const runner = ReplayRunner.sequence([{ exitCode: 0 }]);
    const attempt = client(runner).nodeUpdate({ iqn: VOL1, portal: P1 }, 'node.session.auth.password', 'x\nnode.startup = automatic');
    await expect(attempt).rejects.toMatchObject({ code: 'VALIDATION' });
    await expect(attempt).rejects.not.toThrow(/node\.startup = automatic/);
    expect(runner.calls).toHaveLength(0);
  });

  it('nodeDelete: `--op delete`; rc 21 is absent', async () => {
    const missing = replay('iscsiadm-node-delete-missing.txt');
    expect(await client(missing).nodeDelete({ iqn: VOL1, portal: P1 })).toBe('absent');
    expect(missing.calls[0]?.args).toEqual([...NODE1, '--op', 'delete']);
    const present = ReplayRunner.sequence([replyOf(readFixture('iscsiadm-node-delete.txt'))]);
    expect(await client(present).nodeDelete({ iqn: VOL2, portal: P1 })).toBe('deleted');
  });

  it('nodeDelete while a session uses the record (rc 15) is a CONFLICT, not retried', async () => {
    const runner = ReplayRunner.sequence([
      {
        exitCode: 15,
        stderr: `iscsiadm: This command will remove the record [iface: default, target: ${VOL1}, portal: 127.0.0.1,3260], but a session is using it. Logout session then rerun command to remove record.\n`,
      },
    ]);
    const error = await caught(client(runner).nodeDelete({ iqn: VOL1, portal: P1 }));
    expect(error).toMatchObject({ code: 'CONFLICT', errorName: 'SESS_EXISTS' });
    expect(runner.calls).toHaveLength(1);
  });

  it('nodeList: `-m node`; [] on rc 21', async () => {
    const runner = replay('iscsiadm-node-list-3.txt');
    const list = await client(runner).nodeList();
    expect(runner.calls[0]?.args).toEqual(['-m', 'node']);
    expect(list.map((n) => `${n.portal.host}:${n.portal.port},${n.portal.tpgt} ${n.iqn}`)).toEqual([
      `127.0.0.1:3260,-1 ${VOL1}`,
      `127.0.0.2:3260,-1 ${VOL1}`,
      `127.0.0.1:3260,1 ${VOL2}`,
    ]);
    expect(await client(replay('iscsiadm-node-list-empty.txt')).nodeList()).toEqual([]);
  });

  it('sessions: `-m session`; [] on "No active sessions."', async () => {
    const none = replay('iscsiadm-session-none.txt');
    expect(await client(none).sessions()).toEqual([]);
    expect(none.calls[0]?.args).toEqual(['-m', 'session']);
    const some = ReplayRunner.sequence([{ stdout: `tcp: [1] 127.0.0.1:3260,1 ${VOL1} (non-flash)\n` }]);
    expect(await client(some).sessions()).toEqual([
      { transport: 'tcp', sid: 1, portal: { host: '127.0.0.1', port: 3260, tpgt: 1 }, iqn: VOL1, flash: false },
    ]);
  });

  it('login: `--login`; without iscsid (recorded rc 20) it retries with backoff, then says to start iscsid', async () => {
    const runner = replay('iscsiadm-login.txt');
    const delays: number[] = [];
    const error = await caught(
      client(runner, { retry: { attempts: 3, baseDelayMs: 2, maxDelayMs: 50 }, onRetry: (e) => delays.push(e.delayMs) }).login({ iqn: VOL1, portal: P1 }),
    );
    expect(runner.calls.map((c) => c.args)).toEqual([
      [...NODE1, '--login'],
      [...NODE1, '--login'],
      [...NODE1, '--login'],
    ]);
    expect(delays).toHaveLength(2);
    expect(delays[0]).toBeGreaterThanOrEqual(1);
    expect(delays[1]).toBeGreaterThanOrEqual(2);
    expect(error).toMatchObject({ code: 'HOST_UNSUPPORTED', iscsiadmExitCode: 20, errorName: 'ISCSID_NOTCONN', exitClass: 'retryable' });
    expect(error.hint).toMatch(/start iscsid/);
  });

  it('login: rc 0 is logged-in, rc 15 already-present (KERNEL-MODEL §2.3 outputs)', async () => {
    const ok = ReplayRunner.sequence([
      {
        stdout: `Logging in to [iface: default, target: ${VOL1}, portal: 127.0.0.1,3260]\nLogin to [iface: default, target: ${VOL1}, portal: 127.0.0.1,3260] successful.\n`,
      },
    ]);
    expect(await client(ok).login({ iqn: VOL1, portal: P1 })).toBe('logged-in');
    const present = ReplayRunner.sequence([
      { exitCode: 15, stderr: 'iscsiadm: default: 1 session requested, but 1 already present.\niscsiadm: Could not log into all portals\n' },
    ]);
    expect(await client(present).login({ iqn: VOL1, portal: P1 })).toBe('already-present');
    expect(present.calls).toHaveLength(1);
  });

  it('login: wrong CHAP (24) and a refused ACL (19) fail at once with what to check', async () => {
    const failed = (code: number, message: string): Reply => ({
      exitCode: code,
      stdout: `Logging in to [iface: default, target: ${VOL1}, portal: 127.0.0.1,3260]\n`,
      stderr: `iscsiadm: Could not login to [iface: default, target: ${VOL1}, portal: 127.0.0.1,3260].\niscsiadm: initiator reported error (${code} - ${message})\niscsiadm: Could not log into all portals\n`,
    });
    const auth = ReplayRunner.sequence([failed(24, 'iSCSI login failed due to authorization failure')]);
    const authError = await caught(client(auth).login({ iqn: VOL1, portal: P1 }));
    expect(authError).toMatchObject({ code: 'AUTH_FAILED', errorName: 'LOGIN_AUTH_FAILED', exitClass: 'fatal' });
    expect(authError.hint).toMatch(/CHAP/);
    expect(auth.calls).toHaveLength(1);

    const acl = ReplayRunner.sequence([failed(19, 'encountered non-retryable iSCSI login failure')]);
    const aclError = await caught(client(acl).login({ iqn: VOL1, portal: P1 }));
    expect(aclError).toMatchObject({ code: 'UNPROCESSABLE', errorName: 'FATAL_LOGIN', exitClass: 'fatal' });
    expect(acl.calls).toHaveLength(1);
  });

  it('login: an unreachable portal (8) is retried within the bound and then a TIMEOUT', async () => {
    const runner = ReplayRunner.sequence([{ exitCode: 8, stderr: 'iscsiadm: initiator reported error (8 - connection timed out)\n' }]);
    const error = await caught(client(runner).login({ iqn: VOL1, portal: P1 }));
    expect(error).toMatchObject({ code: 'TIMEOUT', exitClass: 'retryable-within-deadline' });
    expect(runner.calls).toHaveLength(3);
  });

  it('login of a target without a record (recorded rc 21) is NOT_FOUND, not retried', async () => {
    const runner = replay('iscsiadm-login-missing-record.txt');
    const error = await caught(client(runner).login({ iqn: 'iqn.2026-01.test.berth:missing', portal: P1 }));
    expect(error.code).toBe('NOT_FOUND');
    expect(runner.calls).toHaveLength(1);
  });

  it('logout: `--logout`; recorded rc 21 is absent, rc 0 logged-out', async () => {
    const runner = replay('iscsiadm-logout.txt');
    expect(await client(runner).logout({ iqn: VOL1, portal: P1 })).toBe('absent');
    expect(runner.calls[0]?.args).toEqual([...NODE1, '--logout']);
    expect(await client(ReplayRunner.sequence([{ exitCode: 0 }])).logout({ iqn: VOL1, portal: P1 })).toBe('logged-out');
  });

  it('discover without auth: `-m discovery -t sendtargets -I default -p P`, the targets returned', async () => {
    const runner = ReplayRunner.sequence([{ stdout: `127.0.0.1:3260,1 ${VOL1}\n127.0.0.1:3260,1 ${VOL2}\n` }]);
    const found = await client(runner).discover(P1);
    expect(runner.calls.map((c) => c.args)).toEqual([['-m', 'discovery', '-t', 'sendtargets', '-I', 'default', '-p', P1]]);
    expect(found.map((t) => t.iqn)).toEqual([VOL1, VOL2]);
    expect(await client(ReplayRunner.sequence([{ exitCode: 21, stderr: 'iscsiadm: No portals found\n' }])).discover(P1)).toEqual([]);
  });

  it('discover with CHAP: discoverydb new, one update with every auth key, --discover, then delete when asked', async () => {
    const runner = new ReplayRunner((args) => (args.includes('--discover') ? { stdout: `[2001:db8::5]:3260,1 ${VOL1}\n` } : { exitCode: 0 }));
    const found = await client(runner).discover('[2001:db8::5]', {
      auth: { method: 'CHAP', username: 'chapuser', password: 'pw-out-123', usernameIn: 'chaptarget', passwordIn: 'pw-in-456' },
      deleteRecord: true,
    });
    const portal = '[2001:db8::5]:3260';
    expect(runner.calls.map((c) => c.args)).toEqual([
      ['-m', 'discoverydb', '-t', 'sendtargets', '-p', portal, '-I', 'default', '--op', 'new'],
      [
        '-m', 'discoverydb', '-t', 'sendtargets', '-I', 'default', '-p', portal, '--op', 'update',
        '-n', 'discovery.sendtargets.auth.authmethod', '-v', 'CHAP',
        '-n', 'discovery.sendtargets.auth.username', '-v', 'chapuser',
        '-n', 'discovery.sendtargets.auth.password', '-v', 'pw-out-123',
        '-n', 'discovery.sendtargets.auth.username_in', '-v', 'chaptarget',
        '-n', 'discovery.sendtargets.auth.password_in', '-v', 'pw-in-456',
      ],
      ['-m', 'discoverydb', '-t', 'sendtargets', '-I', 'default', '-p', portal, '--discover'],
      ['-m', 'discoverydb', '-t', 'sendtargets', '-p', portal, '--op', 'delete'],
    ]);
    expect(found).toEqual([{ iqn: VOL1, portal: { host: '2001:db8::5', port: 3260, tpgt: 1 } }]);
    const update = runner.calls[1];
    expect(update?.options.secrets).toEqual(['pw-out-123', 'pw-in-456']);
    for (const call of runner.calls) {
      expect(call.logged).not.toContain('pw-out-123');
      expect(call.logged).not.toContain('pw-in-456');
    }
  });

  it('discover: the recorded rc 12 (no iscsi_tcp) fails at once, and the record is still deleted when asked', async () => {
    const recorded = readFixture('iscsiadm-discovery-sendtargets.txt');
    const runner = new ReplayRunner((args) => (args.includes('delete') ? replyOf(readFixture('iscsiadm-discoverydb-delete.txt')) : replyOf(recorded)));
    const error = await caught(client(runner).discover(P1, { deleteRecord: true }));
    expect(error).toMatchObject({ code: 'HOST_UNSUPPORTED', iscsiadmExitCode: 12, errorName: 'TRANS_NOT_FOUND' });
    expect(error.hint).toMatch(/modprobe iscsi_tcp/);
    expect(runner.calls.map((c) => c.args.join(' '))).toEqual([
      '-m discovery -t sendtargets -I default -p 127.0.0.1:3260',
      '-m discoverydb -t sendtargets -p 127.0.0.1:3260 --op delete',
    ]);
  });

  it('discoverydbDelete: recorded rc 0 is deleted, recorded rc 6 "not found" is absent', async () => {
    expect(await client(replay('iscsiadm-discoverydb-delete.txt')).discoverydbDelete(P1)).toBe('deleted');
    expect(await client(replay('iscsiadm-discoverydb-delete-unreachable.txt')).discoverydbDelete('127.0.0.9')).toBe('deleted');
    const missing = replay('iscsiadm-discoverydb-delete-missing.txt');
    expect(await client(missing).discoverydbDelete(P1)).toBe('absent');
    expect(missing.calls).toHaveLength(1);
  });

  it('rescanSession: `-m session -r SID --rescan`; a missing session (rc 22) is NOT_FOUND', async () => {
    const ok = ReplayRunner.sequence([{ stdout: `Rescanning session [sid: 3, target: ${VOL1}, portal: 127.0.0.1,3260]\n` }]);
    await client(ok).rescanSession(3);
    expect(ok.calls[0]?.args).toEqual(['-m', 'session', '-r', '3', '--rescan']);
    const gone = ReplayRunner.sequence([replyOf(readFixture('iscsiadm-session-sid-missing.txt'))]);
    expect(await caught(client(gone).rescanSession(1))).toMatchObject({ code: 'NOT_FOUND', errorName: 'SYSFS_LOOKUP' });
  });
});

describe('IscsiadmClient timeouts, retries and cancellation', () => {
  it('gives every run a 30 s timeout by default, or the one asked for', async () => {
    const runner = ReplayRunner.sequence([{ exitCode: 0 }]);
    await client(runner).nodeDelete({ iqn: VOL1, portal: P1 });
    await client(runner, { timeoutMs: 5_000 }).nodeDelete({ iqn: VOL1, portal: P1 });
    await client(runner).nodeDelete({ iqn: VOL1, portal: P1 }, { timeoutMs: 700 });
    expect(runner.calls.map((c) => c.options.timeoutMs)).toEqual([30_000, 5_000, 700]);
    expect(runner.calls.every((c) => c.options.reject === false)).toBe(true);
  });

  it('retries a timed-out run, then reports TIMEOUT', async () => {
    const runner = ReplayRunner.sequence([{ exitCode: -1, timedOut: true }]);
    const error = await caught(client(runner).sessions());
    expect(error).toMatchObject({ code: 'TIMEOUT', errorName: 'TIMEOUT', exitClass: 'retryable' });
    expect(runner.calls).toHaveLength(3);
  });

  it('succeeds when a retry does (database failure, then success)', async () => {
    const runner = ReplayRunner.sequence([{ exitCode: 6, stderr: 'iscsiadm: Could not lock discovery DB\n' }, { exitCode: 0 }]);
    await client(runner).nodeNew({ iqn: VOL1, portal: P1 });
    expect(runner.calls).toHaveLength(2);
  });

  it('stops retrying when the signal fires, and passes the signal to each run', async () => {
    const controller = new AbortController();
    const runner = ReplayRunner.sequence([replyOf(readFixture('iscsiadm-login.txt'))]);
    const c = client(runner, { retry: { attempts: 10, baseDelayMs: 600_000, maxDelayMs: 600_000 }, onRetry: () => controller.abort() });
    const error = await caught(c.login({ iqn: VOL1, portal: P1 }, { signal: controller.signal }));
    expect(error.iscsiadmExitCode).toBe(20);
    expect(runner.calls).toHaveLength(1);
    expect(runner.calls[0]?.options.signal).toBe(controller.signal);
  });

  it('reports a run cut by the deadline as TIMEOUT and one cut by a cancel as CANCELLED', async () => {
    // The signal fires while iscsiadm runs: the runner reports the run as aborted.
    const cutBy = (controller: AbortController, reason?: unknown): ReplayRunner =>
      new ReplayRunner(() => {
        controller.abort(reason);
        return { exitCode: -1, aborted: true };
      });
    const deadline = new AbortController();
    const late = await caught(client(cutBy(deadline, new BerthError('TIMEOUT', 'the operation passed its deadline'))).login({ iqn: VOL1, portal: P1 }, { signal: deadline.signal }));
    expect(late).toMatchObject({ code: 'TIMEOUT', exitClass: 'cancelled', errorName: 'ABORTED' });
    const cancel = new AbortController();
    const cancelled = await caught(client(cutBy(cancel)).login({ iqn: VOL1, portal: P1 }, { signal: cancel.signal }));
    expect(cancelled).toMatchObject({ code: 'CANCELLED', exitClass: 'cancelled' });
  });

  it('runs nothing when the signal has already fired', async () => {
    const fired = new AbortController();
    fired.abort(new BerthError('TIMEOUT', 'the operation passed its deadline'));
    const runner = ReplayRunner.sequence([{ exitCode: 0 }]);
    await expect(client(runner).login({ iqn: VOL1, portal: P1 }, { signal: fired.signal })).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(runner.calls).toHaveLength(0);
  });

  it('reads the result out of a CommandError when a runner throws one anyway', async () => {
    const result: CommandResult = { command: 'iscsiadm', exitCode: 21, stdout: '', stderr: 'iscsiadm: No matching sessions found\n', durationMs: 1, timedOut: false, aborted: false };
    const throwing: CommandRunner = {
      run: async () => {
        throw new CommandError(result);
      },
    };
    expect(await client(throwing).logout({ iqn: VOL1, portal: P1 })).toBe('absent');
  });

  it('says to install open-iscsi when iscsiadm is missing, without retrying', async () => {
    const runner = ReplayRunner.sequence([{ exitCode: -1, notFound: true }]);
    expect(await caught(client(runner).sessions())).toMatchObject({ code: 'HOST_UNSUPPORTED', errorName: 'NOT_INSTALLED' });
    expect(runner.calls).toHaveLength(1);
  });

  it('validates targets before running anything', async () => {
    const runner = ReplayRunner.sequence([{ exitCode: 0 }]);
    const c = client(runner);
    await expect(c.login({ iqn: 'not an iqn', portal: P1 })).rejects.toMatchObject({ code: 'VALIDATION' });
    await expect(c.login({ iqn: VOL1, portal: '1.2.3.4:99999' })).rejects.toMatchObject({ code: 'VALIDATION' });
    await expect(c.nodeNew({ iqn: VOL1, portal: P1 }, '--op')).rejects.toMatchObject({ code: 'VALIDATION' });
    await expect(c.nodeUpdate({ iqn: VOL1, portal: P1 }, '-n', 'x')).rejects.toMatchObject({ code: 'VALIDATION' });
    expect(runner.calls).toHaveLength(0);
  });
});
