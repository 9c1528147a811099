import { describe, expect, it } from 'vitest';
import { isMaskedSecret, MASKED_SECRET, parseRecord, parseRecords } from './record-parser.js';
import { readFixture } from '@berth/testkit/fixtures';

describe('parseRecords (recorded iscsiadm node, discovery and iface records)', () => {
  it('reads a fresh node record: keys in order, <empty> as empty text, defaults of the record', () => {
    const recorded = readFixture('iscsiadm-node-show-after-new.txt');
    expect(recorded.cmd).toBe('iscsiadm -m node -T iqn.2026-01.test.berth:vol1 -p 127.0.0.1:3260');
    const records = parseRecords(recorded.stdout);
    expect(records).toHaveLength(1);
    const record = records[0] ?? {};
    expect(Object.keys(record)[0]).toBe('node.name');
    expect(Object.keys(record).at(-1)).toBe('node.conn[0].iscsi.OFMarker');
    expect(record).toMatchObject({
      'node.name': 'iqn.2026-01.test.berth:vol1',
      'node.tpgt': '-1',
      'node.startup': 'manual',
      'iface.iscsi_ifacename': 'default',
      'iface.net_ifacename': '',
      'node.session.auth.authmethod': 'None',
      'node.session.auth.username': '',
      'node.session.auth.password': '',
      'node.session.initial_login_retry_max': '4',
      'node.session.scan': 'auto',
      'node.conn[0].address': '127.0.0.1',
      'node.conn[0].port': '3260',
      'node.conn[0].timeo.login_timeout': '30',
    });
    expect(Object.values(record)).not.toContain('<empty>');
  });

  it('reads a CHAP record: set passwords are masked, user names are not', () => {
    const record = parseRecord(readFixture('iscsiadm-node-show-after-chap.txt').stdout);
    expect(record?.['node.startup']).toBe('automatic');
    expect(record?.['node.session.auth.authmethod']).toBe('CHAP');
    expect(record?.['node.session.auth.username']).toBe('chapuser');
    expect(record?.['node.session.auth.username_in']).toBe('chaptarget');
    expect(record?.['node.session.auth.password']).toBe(MASKED_SECRET);
    expect(isMaskedSecret(record?.['node.session.auth.password_in'])).toBe(true);
  });

  it('reads the --show record with the passwords in clear (SECRET in the recording)', () => {
    const recorded = readFixture('iscsiadm-node-show-after-chap-show-secrets.txt');
    expect(recorded.cmd).toContain('--op show --show');
    const record = parseRecord(recorded.stdout);
    expect(record?.['node.session.auth.password']).toBe('SECRET');
    expect(record?.['node.session.auth.password_in']).toBe('SECRET');
    expect(isMaskedSecret(record?.['node.session.auth.password'])).toBe(false);
  });

  it('reads `--op show -n KEY` as the whole record (iscsiadm ignores -n there)', () => {
    const record = parseRecord(readFixture('iscsiadm-node-show-name-filter.txt').stdout);
    expect(Object.keys(record ?? {}).length).toBeGreaterThan(60);
    expect(record?.['node.session.auth.password']).toBe(MASKED_SECRET);
  });

  it('reads several records (-m node -T IQN without -p), one per portal', () => {
    const records = parseRecords(readFixture('iscsiadm-node-show-target-all-portals.txt').stdout);
    expect(records.map((r) => [r['node.name'], r['node.conn[0].address'], r['node.conn[0].port']])).toEqual([
      ['iqn.2026-01.test.berth:vol1', '127.0.0.1', '3260'],
      ['iqn.2026-01.test.berth:vol1', '127.0.0.2', '3260'],
    ]);
  });

  it('reads key lines without BEGIN/END as one record (a filtered listing)', () => {
    const record = parseRecord(readFixture('iscsiadm-node-show-after-new-over-existing.txt').stdout);
    expect(record).toEqual({
      'node.startup': 'manual',
      'node.session.auth.authmethod': 'None',
      'node.session.auth.username': '',
      'node.session.auth.password': '',
      'node.session.auth.username_in': '',
      'node.session.auth.password_in': '',
      'node.session.auth.chap_algs': 'MD5',
    });
  });

  it('reads the on-disk node files and the discovery record the same way', () => {
    const onDisk = parseRecord(readFixture('etc-iscsi-nodes-file-after-chap.txt').stdout);
    expect(onDisk?.['node.session.auth.password']).toBe('SECRET');
    expect(onDisk?.['iface.net_ifacename']).toBeUndefined();
    expect(parseRecord(readFixture('etc-iscsi-nodes-file-after-new.txt').stdout)?.['node.startup']).toBe('manual');
    const st = parseRecord(readFixture('etc-iscsi-send-targets-st-config.txt').stdout);
    expect(st?.['discovery.sendtargets.address']).toBe('127.0.0.1');
    const shown = parseRecord(readFixture('iscsiadm-discoverydb-show.txt').stdout);
    expect(shown).toMatchObject({
      'discovery.type': 'sendtargets',
      'discovery.sendtargets.port': '3260',
      'discovery.sendtargets.auth.authmethod': 'None',
      'discovery.sendtargets.auth.username': '',
      'discovery.sendtargets.reopen_max': '5',
    });
  });

  it('reads an iface record (os-brick takes iface.transport_name from it)', () => {
    const iface = parseRecord(readFixture('iscsiadm-iface-default.txt').stdout);
    expect(iface?.['iface.transport_name']).toBe('tcp');
    expect(iface?.['iface.iscsi_ifacename']).toBe('default');
  });

  it('reads nothing from empty output or a failed show', () => {
    expect(parseRecords(readFixture('iscsiadm-node-show-missing.txt').stdout)).toEqual([]);
    expect(parseRecord('')).toBeUndefined();
  });
});
