import { describe, expect, it } from 'vitest';
import { parseAccountList, parsePortalList, parseSystemState, parseTargetList } from './tgtadm-show-parser.js';
import { readFixture } from '@berth/testkit/fixtures';

describe('parseTargetList (tgtadm --op show --mode target, tgt 1.0.85)', () => {
  it('reads a CHAP target: LUN 0 controller, LUN 1 on its file, incoming and outgoing accounts, ACLs', () => {
    const [target, ...rest] = parseTargetList(readFixture('tgtadm-show-target-chap-no-session.txt').stdout);
    expect(rest).toEqual([]);
    expect(target).toEqual({
      tid: 1,
      iqn: 'iqn.2026-01.test.berth:vol1',
      state: 'ready',
      nexuses: [],
      luns: [
        { lun: 0, type: 'controller', sizeMb: 0, backingStoreType: 'null', backingStorePath: null, online: true, scsiId: 'IET     00010000' },
        { lun: 1, type: 'disk', sizeMb: 67, backingStoreType: 'rdwr', backingStorePath: '/srv/fixt/lun1.img', online: true, scsiId: 'IET     00010001' },
      ],
      accounts: [
        { user: 'chapuser', outgoing: false },
        { user: 'chaptarget', outgoing: true },
      ],
      acls: ['ALL', 'iqn.2026-01.test.berth:initiator-a'],
    });
  });

  it('reads a live session: nexus id, initiator (without its alias) and address', () => {
    const [target] = parseTargetList(readFixture('tgtadm-show-target-active-session.txt').stdout);
    expect(target?.nexuses).toEqual([{ id: 16, initiator: 'iqn.2026-01.test.berth:initiator-a', addresses: ['127.0.0.1'] }]);
  });

  it('reads two targets with the session on the second only', () => {
    const targets = parseTargetList(readFixture('tgtadm-show-target-two-targets-session-on-tid2.txt').stdout);
    expect(targets.map((t) => [t.tid, t.iqn, t.nexuses.map((n) => n.initiator), t.accounts.length, t.acls])).toEqual([
      [1, 'iqn.2026-01.test.berth:vol1', [], 2, ['ALL', 'iqn.2026-01.test.berth:initiator-a']],
      [2, 'iqn.2026-01.test.berth:vol2', ['iqn.2026-01.test.berth:initiator-b'], 0, ['ALL']],
    ]);
    expect(targets[1]?.luns[1]).toMatchObject({ lun: 1, sizeMb: 34, backingStorePath: '/srv/fixt/lun2.img' });
  });

  it('reads an empty ACL list after the unbind, and a target with only LUN 0 after the LUN delete', () => {
    const [afterUnbind] = parseTargetList(readFixture('tgtadm-show-target-tid2-after-unbind.txt').stdout);
    expect(afterUnbind).toMatchObject({ tid: 2, acls: [], accounts: [] });
    expect(afterUnbind?.nexuses).toHaveLength(1);
    const [afterLunDelete] = parseTargetList(readFixture('tgtadm-show-target-tid2-after-lun-delete.txt').stdout);
    expect(afterLunDelete?.luns.map((l) => l.lun)).toEqual([0]);
  });

  it('reads no targets from empty output', () => {
    expect(parseTargetList(readFixture('tgtadm-show-target-empty.txt').stdout)).toEqual([]);
    expect(parseTargetList(readFixture('tgtadm-show-target-empty-after-delete.txt').stdout)).toEqual([]);
  });

  it('refuses output that is not a target listing (the --tid form prints parameters)', () => {
    expect(() => parseTargetList(readFixture('tgtadm-show-target-tid1-active-session.txt').stdout)).toThrow(/unexpected line/);
  });
});

describe('the other show modes', () => {
  it('reads portals without their tag, newest first as tgtd lists them', () => {
    expect(parsePortalList(readFixture('tgtadm-show-portal-two.txt').stdout)).toEqual(['127.0.0.2:3260', '127.0.0.1:3260']);
    expect(parsePortalList(readFixture('tgtadm-show-portal-one.txt').stdout)).toEqual(['127.0.0.1:3260']);
    expect(parsePortalList('Portal: [::]:3260,1\nPortal: 0.0.0.0:3260,1\n')).toEqual(['[::]:3260', '0.0.0.0:3260']);
  });

  it('reads account names, and none from empty output', () => {
    expect(parseAccountList(readFixture('tgtadm-show-account.txt').stdout)).toEqual(['chaptarget', 'chapuser']);
    expect(parseAccountList(readFixture('tgtadm-show-account-empty.txt').stdout)).toEqual([]);
  });

  it('reads the system state', () => {
    expect(parseSystemState(readFixture('tgtadm-show-sys.txt').stdout)).toBe('ready');
    expect(parseSystemState('')).toBeUndefined();
  });
});
