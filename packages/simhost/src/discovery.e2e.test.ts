import type { HostServices } from '@berth/host';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SimulatedHost } from './simulated-host.js';
import { PORTAL, VOL1, VOL2, iscsiadm, node } from './test-helpers.js';

let sim: SimulatedHost;
let services: HostServices;

beforeEach(async () => {
  sim = await SimulatedHost.start();
  services = sim.hostServices();
  await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: 1 << 20 } } });
  await sim.san.addTarget({ iqn: VOL2, portals: [PORTAL], luns: { 1: { sizeBytes: 1 << 20 } } });
});

afterEach(async () => {
  await sim.stop();
});

const discover = (...extra: string[]): Promise<import('@berth/host').CommandResult> =>
  iscsiadm(services, '-m', 'discovery', '-t', 'sendtargets', '-p', PORTAL, ...extra);

async function show(iqn: string, key: string): Promise<string | undefined> {
  const r = await iscsiadm(services, ...node(iqn), '--op', 'show', '--show');
  return r.stdout.split('\n').find((l) => l.startsWith(`${key} = `))?.slice(key.length + 3);
}

describe('sendtargets discovery', { timeout: 60_000 }, () => {
  it('prints every target at the asked portal with tag 1 and stores tagged records', async () => {
    const r = await discover();
    expect(r).toMatchObject({ exitCode: 0, stdout: `127.0.0.1:3260,1 ${VOL1}\n127.0.0.1:3260,1 ${VOL2}\n`, stderr: '' });
    expect(await services.fs.readdir(`/etc/iscsi/nodes/${VOL1}`)).toEqual(['127.0.0.1,3260,1']);
    expect(await services.fs.readdir(`/etc/iscsi/nodes/${VOL1}/127.0.0.1,3260,1`)).toEqual(['default']);
    expect((await services.fs.readdir('/etc/iscsi/send_targets/127.0.0.1,3260')).sort()).toEqual([
      `${VOL1},127.0.0.1,3260,1,default`,
      `${VOL2},127.0.0.1,3260,1,default`,
      'st_config',
    ]);
    expect(await show(VOL1, 'node.discovery_address')).toBe('127.0.0.1');
    expect(await show(VOL1, 'node.discovery_type')).toBe('send_targets');
    expect(await show(VOL1, 'node.tpgt')).toBe('1');
    expect((await iscsiadm(services, '-m', 'node')).stdout).toBe(`127.0.0.1:3260,1 ${VOL1}\n127.0.0.1:3260,1 ${VOL2}\n`);
  });

  it('rewrites returned records with the defaults, losing node.startup and CHAP', async () => {
    await discover();
    await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', 'node.startup', '-v', 'automatic');
    await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', 'node.session.auth.authmethod', '-v', 'CHAP');
    await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', 'node.session.auth.password', '-v', 'secret');
    expect(await show(VOL1, 'node.startup')).toBe('automatic');
    expect((await discover()).exitCode).toBe(0);
    expect(await show(VOL1, 'node.startup')).toBe('manual');
    expect(await show(VOL1, 'node.session.auth.authmethod')).toBe('None');
    expect(await show(VOL1, 'node.session.auth.password')).toBe('<empty>');
  });

  it('replaces an untagged record of the same portal with the discovered one', async () => {
    await iscsiadm(services, ...node(VOL1), '--op', 'new');
    await discover();
    expect(await services.fs.readdir(`/etc/iscsi/nodes/${VOL1}`)).toEqual(['127.0.0.1,3260,1']);
  });

  it('deletes records the portal no longer returns, but keeps one a session uses (15 on stderr)', async () => {
    await discover();
    await iscsiadm(services, ...node(VOL1), '--op', 'update', '-n', 'node.session.scan', '-v', 'manual');
    expect((await iscsiadm(services, ...node(VOL1), '--login')).exitCode).toBe(0);
    await sim.san.removeTarget(VOL1);
    await sim.san.removeTarget(VOL2);
    await sim.san.addTarget({ iqn: 'iqn.2026-01.test.berth:vol3', portals: [PORTAL], luns: {} });
    const r = await discover();
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toBe('127.0.0.1:3260,1 iqn.2026-01.test.berth:vol3\n');
    expect(r.stderr).toBe(
      `iscsiadm: This command will remove the record [iface: default, target: ${VOL1}, portal: 127.0.0.1,3260], but a session is using it. Logout session then rerun command to remove record.\n`,
    );
    expect((await services.fs.readdir('/etc/iscsi/nodes')).sort()).toEqual([VOL1, 'iqn.2026-01.test.berth:vol3']);
  });

  it('fails like open-iscsi: no portals (21), nobody listening (11), unreachable (11, bounded)', async () => {
    await sim.san.setAcl(VOL1, ['iqn.2026-01.test.berth:someone-else']);
    await sim.san.setAcl(VOL2, ['iqn.2026-01.test.berth:someone-else']);
    expect(await discover()).toMatchObject({ exitCode: 21, stdout: '', stderr: 'iscsiadm: No portals found\n' });
    expect(await iscsiadm(services, '-m', 'discovery', '-t', 'st', '-p', '127.0.0.9:3260')).toMatchObject({
      exitCode: 11,
      stdout: '',
      stderr: 'iscsiadm: connection login retries (reopen_max) 5 exceeded\niscsiadm: Could not perform SendTargets discovery: iSCSI PDU timed out\n',
    });
    await sim.faults.unreachablePortal(PORTAL, 100);
    const started = Date.now();
    expect((await discover()).exitCode).toBe(11);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('discovers through a discoverydb record with CHAP, as os-brick does', async () => {
    await sim.san.setDiscoveryChap({ username: 'discuser', password: 'disc-secret' });
    const db = ['-m', 'discoverydb', '-t', 'sendtargets', '-p', PORTAL];
    expect(await iscsiadm(services, ...db, '--op', 'update', '-n', 'discovery.sendtargets.auth.authmethod', '-v', 'CHAP')).toMatchObject({
      exitCode: 6,
      stderr: 'iscsiadm: Discovery record [127.0.0.1,3260] not found.\n',
    });
    expect((await iscsiadm(services, '-m', 'discoverydb', '-t', 'sendtargets', '-p', PORTAL, '-I', 'default', '--op', 'new')).exitCode).toBe(0);
    const update = (password: string): Promise<import('@berth/host').CommandResult> =>
      iscsiadm(
        services,
        '-m', 'discoverydb', '-t', 'sendtargets', '-I', 'default', '-p', PORTAL, '--op', 'update',
        '-n', 'discovery.sendtargets.auth.authmethod', '-v', 'CHAP',
        '-n', 'discovery.sendtargets.auth.username', '-v', 'discuser',
        '-n', 'discovery.sendtargets.auth.password', '-v', password,
      );
    expect(await update('wrong')).toMatchObject({ exitCode: 0, stdout: '', stderr: '' });
    const denied = await iscsiadm(services, '-m', 'discoverydb', '-t', 'sendtargets', '-I', 'default', '-p', PORTAL, '--discover');
    expect(denied).toMatchObject({
      exitCode: 24,
      stderr:
        'iscsiadm: discovery login to 127.0.0.1 rejected: initiator failed authorization\n' +
        'iscsiadm: Could not perform SendTargets discovery: iSCSI login failed due to authorization failure\n',
    });
    await update('disc-secret');
    const shown = await iscsiadm(services, ...db);
    expect(shown.stdout).toContain('discovery.sendtargets.auth.password = ********\n');
    const ok = await iscsiadm(services, '-m', 'discoverydb', '-t', 'sendtargets', '-I', 'default', '-p', PORTAL, '--discover');
    expect(ok).toMatchObject({ exitCode: 0, stdout: `127.0.0.1:3260,1 ${VOL1}\n127.0.0.1:3260,1 ${VOL2}\n`, stderr: '' });
    expect(await iscsiadm(services, ...db, '--op', 'delete')).toMatchObject({ exitCode: 0, stdout: '', stderr: '' });
    // The node records stay; only the discovery record and its links go.
    expect((await iscsiadm(services, '-m', 'node')).exitCode).toBe(0);
    expect(await services.fs.exists('/etc/iscsi/send_targets/127.0.0.1,3260')).toBe(false);
  });
});
