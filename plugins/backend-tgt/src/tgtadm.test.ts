import { describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { Tgtadm } from './tgtadm.js';
import { readFixture } from '@berth/testkit/fixtures';
import { replayRunner, type RecordedReply } from './test-replay-runner.js';

const SECRET = 'Zq8mXw2LkP0vB7nR4tY6uC1d';

function client(answer: RecordedReply | 'not-found') {
  const runner = replayRunner(() => answer);
  const tgtadm = new Tgtadm({ runner, controlPort: 7, logHint: 'see /data/backend-tgt/tgtd.log', noDaemonHint: 'berth starts it again' });
  return { runner, tgtadm };
}

async function errorOf(promise: Promise<unknown>): Promise<BerthError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!BerthError.is(error)) throw new Error(`expected a BerthError, got ${String(error)}`);
  return error;
}

describe('Tgtadm', () => {
  it('runs tgtadm with the control port and an argument array', async () => {
    const { runner, tgtadm } = client(readFixture('tgtadm-new-target.txt'));
    await tgtadm.newTarget(3, 'iqn.2026-11.io.berth:volume-x');
    expect(runner.calls[0]?.args).toEqual(['-C', '7', '--lld', 'iscsi', '--op', 'new', '--mode', 'target', '--tid', '3', '--targetname', 'iqn.2026-11.io.berth:volume-x']);
    expect(runner.calls[0]?.options.timeoutMs).toBeGreaterThan(0);
  });

  it('sets the client\'s target parameters on a new target, one request each', async () => {
    const runner = replayRunner(() => readFixture('tgtadm-new-target.txt'));
    const tgtadm = new Tgtadm({ runner, controlPort: 7, logHint: '', noDaemonHint: '', targetParams: { MaxBurstLength: '1048576', InitialR2T: 'No' } });
    await tgtadm.newTarget(3, 'iqn.2026-11.io.berth:volume-x');
    expect(runner.calls.map((c) => c.args.slice(4).join(' '))).toEqual([
      '--op new --mode target --tid 3 --targetname iqn.2026-11.io.berth:volume-x',
      '--op update --mode target --tid 3 --name MaxBurstLength --value 1048576',
      '--op update --mode target --tid 3 --name InitialR2T --value No',
    ]);
  });

  it('hands CHAP passwords to the runner as secrets', async () => {
    const { runner, tgtadm } = client(readFixture('tgtadm-new-account.txt'));
    await tgtadm.newAccount('berth-abc', SECRET);
    expect(runner.calls[0]?.options.secrets).toContain(SECRET);
    expect(runner.calls[0]?.command).not.toContain(SECRET);
  });

  it('says what was being done on rc 22 and points at tgtd\'s log for the reason', async () => {
    const { tgtadm } = client(readFixture('tgtadm-new-lun-missing-backing-file.txt'));
    const error = await errorOf(tgtadm.newLun(1, 1, '/data/luns/x.img'));
    expect(error.code).toBe('BACKEND_ERROR');
    expect(error.message).toBe('add LUN 1 backed by /data/luns/x.img to tid 1: tgtadm failed (exit 22): invalid request');
    expect(error.hint).toContain('/data/backend-tgt/tgtd.log');
    expect(error.details).toMatchObject({ exitCode: 22, controlPort: 7 });
  });

  it('calls duplicates and busy targets conflicts', async () => {
    expect((await errorOf(client(readFixture('tgtadm-new-target-duplicate-name.txt')).tgtadm.newTarget(1, 'iqn.x:y'))).code).toBe('CONFLICT');
    expect((await errorOf(client(readFixture('tgtadm-delete-target-active-session.txt')).tgtadm.deleteTarget(1, false))).code).toBe('CONFLICT');
    expect((await errorOf(client(readFixture('tgtadm-bind-account-outgoing-second.txt')).tgtadm.bindAccount(1, 'u', true))).code).toBe('CONFLICT');
  });

  it('says tgtd is not running on rc 107', async () => {
    const error = await errorOf(client(readFixture('tgtadm-show-target-no-daemon.txt')).tgtadm.showTargets());
    expect(error.code).toBe('BACKEND_ERROR');
    expect(error.message).toBe('list the targets: tgtd is not running on control port 7');
    expect(error.hint).toBe('berth starts it again');
  });

  it('says how to install tgt when tgtadm is missing', async () => {
    const error = await errorOf(client('not-found').tgtadm.showTargets());
    expect(error.code).toBe('HOST_UNSUPPORTED');
    expect(error.hint).toContain('apt-get install -y tgt');
    await expect(client('not-found').tgtadm.answers()).rejects.toMatchObject({ code: 'HOST_UNSUPPORTED' });
  });

  it('takes "already so" answers as success where the call is idempotent', async () => {
    await client(readFixture('tgtadm-bind-acl-duplicate.txt')).tgtadm.bindInitiator(1, 'iqn.x:a');
    await client(readFixture('tgtadm-unbind-acl-not-bound.txt')).tgtadm.unbindInitiator(1, 'iqn.x:a');
    await client(readFixture('tgtadm-delete-target-missing.txt')).tgtadm.deleteTarget(1, false);
    await client(readFixture('tgtadm-delete-account-missing.txt')).tgtadm.deleteAccount('u');
    await client(readFixture('tgtadm-delete-lun-missing.txt')).tgtadm.deleteLun(1, 1);
    await client(readFixture('tgtadm-unbind-account-not-bound.txt')).tgtadm.unbindAccount(1, 'u', false);
  });

  it('does not take a missing target as success when binding', async () => {
    const error = await errorOf(client(readFixture('tgtadm-bind-acl-missing-tid.txt')).tgtadm.bindInitiator(9, 'iqn.x:a'));
    expect(error.message).toContain("can't find the target");
    expect(error.details.tgtadm).toBe("can't find the target");
  });

  it('answers() is true for a running tgtd and false for rc 107', async () => {
    expect(await client(readFixture('tgtadm-show-sys.txt')).tgtadm.answers()).toBe(true);
    expect(await client(readFixture('tgtadm-show-target-no-daemon.txt')).tgtadm.answers()).toBe(false);
  });

  it('deleteSystem() is true only when tgtd agreed to exit', async () => {
    expect(await client(readFixture('tgtadm-delete-system.txt')).tgtadm.deleteSystem()).toBe(true);
    expect(await client(readFixture('tgtadm-delete-portal-missing.txt')).tgtadm.deleteSystem()).toBe(false);
  });

  it('never puts a secret into an error message, even if tgtadm printed it', async () => {
    const echoed: RecordedReply = { cmd: '', rc: 22, stdout: '', stderr: `tgtadm: bad password ${SECRET}\n` };
    const error = await errorOf(client(echoed).tgtadm.newAccount('u', SECRET));
    expect(error.message).not.toContain(SECRET);
    expect(JSON.stringify(error.toJSON())).not.toContain(SECRET);
  });
});
