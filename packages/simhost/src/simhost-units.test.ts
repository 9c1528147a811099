import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, promises as fsp, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { splitScanWrites } from './fifo-pool.js';
import { DISCOVERY_KEYS, NODE_KEYS, defaultRecord, formatRecordShow, updateParam } from './idbm-record.js';
import { getopt } from './iscsiadm-args.js';
import { NodeDb } from './node-db.js';
import { formatPortal, kernelPeerAddress, parsePortalArg } from './portal-address.js';
import { byPathLunText, kernelLunOf, sdDevT, sdName, targetLunOf } from './sd-names.js';
import { removeEntry, removeTree } from './remove-tree.js';
import { idSerialOf, tgtLunIdentity, wwnLinkOf } from './tgt-identity.js';

describe('removing a disk\'s sysfs tree', () => {
  it('removes files, FIFOs, links (not what they point at) and nested directories; missing paths are fine', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'berth-remove-tree-'));
    try {
      const sdev = path.join(dir, '3:0:0:1');
      mkdirSync(path.join(sdev, 'block/sdb/holders'), { recursive: true });
      writeFileSync(path.join(sdev, 'wwid'), 'naa.6\n');
      execFileSync('mkfifo', [path.join(sdev, 'delete')]);
      writeFileSync(path.join(dir, 'kept'), 'x');
      symlinkSync('../../kept', path.join(sdev, 'block/sdb/device'));
      symlinkSync('3:0:0:1', path.join(dir, 'link'));
      removeTree(sdev);
      expect(existsSync(sdev)).toBe(false);
      expect(existsSync(path.join(dir, 'kept'))).toBe(true);
      removeTree(sdev);
      removeEntry(path.join(dir, 'link'));
      removeEntry(path.join(dir, 'link'));
      expect(readdirSync(dir)).toEqual(['kept']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('scan writes joined by the FIFO', () => {
  it('are split back into the writes sysfs would have seen', () => {
    expect(splitScanWrites('0 0 10 0 20 0 3')).toEqual(['0 0 1', '0 0 2', '0 0 3']);
    expect(splitScanWrites('- - 1- - 2')).toEqual(['- - 1', '- - 2']);
    expect(splitScanWrites('- - -- - -')).toEqual(['- - -', '- - -']);
    expect(splitScanWrites('0 0 120 0 16640')).toEqual(['0 0 12', '0 0 16640']);
    expect(splitScanWrites('- - 1\n0 0 2\n')).toEqual(['- - 1', '0 0 2']);
    expect(splitScanWrites('1')).toEqual(['1']);
  });
});

describe("tgtd's identity of a LUN", () => {
  it('gives the wwid, serial and strings an initiator sees (tid 1, LUN 1)', () => {
    const id = tgtLunIdentity(1, 1);
    expect(id.wwid).toBe('naa.60000000000000000e00000000010001');
    expect(idSerialOf(id.wwid)).toBe('360000000000000000e00000000010001');
    expect(wwnLinkOf(id.wwid)).toBe('wwn-0x60000000000000000e00000000010001');
    expect([id.vendor, id.model, id.rev, id.type]).toEqual(['IET     ', 'VIRTUAL-DISK    ', '0001', 0]);
    expect(id.vpdPg80.subarray(4).toString()).toBe(`${' '.repeat(30)}beaf11`);
    // T10 vendor id, NAA 3 and NAA 6 designators, in that order.
    expect(id.vpdPg83.subarray(8, 24).toString()).toBe('IET     00010001');
    expect(id.vpdPg83.subarray(44, 56).toString('hex')).toBe('010300083000000100000001');
    expect(tgtLunIdentity(2, 0).model).toBe('Controller      ');
  });
});

describe('names', () => {
  it('follows sd.c and udev', () => {
    expect([0, 1, 25, 26, 27, 701, 702].map(sdName)).toEqual(['sda', 'sdb', 'sdz', 'sdaa', 'sdab', 'sdzz', 'sdaaa']);
    expect([0, 1, 15, 16, 17].map(sdDevT)).toEqual(['8:0', '8:16', '8:240', '65:0', '65:16']);
    expect([kernelLunOf(1), kernelLunOf(255), kernelLunOf(256)]).toEqual([1, 255, 16640]);
    expect([targetLunOf(16640), targetLunOf(300)]).toEqual([256, undefined]);
    expect([byPathLunText(1), byPathLunText(16640)]).toEqual(['1', '0x4100000000000000']);
  });

  it('parses and prints portals as open-iscsi does', () => {
    expect(parsePortalArg('127.0.0.1:3260,1')).toEqual({ address: '127.0.0.1', port: 3260, tpgt: 1 });
    expect(parsePortalArg('[fe80::1]:3261')).toEqual({ address: 'fe80::1', port: 3261, tpgt: -1 });
    expect(parsePortalArg('10.0.0.1')).toEqual({ address: '10.0.0.1', port: -1, tpgt: -1 });
    expect(formatPortal('fe80::1', 3260)).toBe('[fe80::1]:3260');
    expect(kernelPeerAddress('fe80::1')).toBe('fe80:0000:0000:0000:0000:0000:0000:0001');
  });
});

describe('records', () => {
  it('checks option values and hides set passwords', () => {
    const values = defaultRecord(NODE_KEYS);
    expect(updateParam(NODE_KEYS, values, 'node.startup', 'sometimes')).toEqual(["unknown value format 'sometimes' for parameter name 'node.startup'"]);
    expect(updateParam(NODE_KEYS, values, 'node.session.auth.password', 'pw')).toEqual([]);
    expect(values.get('node.session.auth.password_length')).toBe('2');
    expect(formatRecordShow(NODE_KEYS, values, false)).toContain('node.session.auth.password = ********\n');
    expect(formatRecordShow(NODE_KEYS, values, false)).not.toContain('password_length');
    expect(updateParam(NODE_KEYS, values, 'node.session.cmds_max', '12abc')).toEqual([]);
    expect(values.get('node.session.cmds_max')).toBe('12');
    expect(formatRecordShow(DISCOVERY_KEYS, defaultRecord(DISCOVERY_KEYS), false)).toContain('discovery.sendtargets.auth.username = <empty>\n');
  });

  it('parses command lines like getopt_long', () => {
    expect(getopt(['-m', 'node', '--op=update', '-P1', '-lu'])).toEqual({
      ok: true,
      options: [{ ch: 'm', arg: 'node' }, { ch: 'o', arg: 'update' }, { ch: 'P', arg: '1' }, { ch: 'l' }, { ch: 'u' }],
    });
    expect(getopt(['--targ', 'x'])).toEqual({ ok: true, options: [{ ch: 'T', arg: 'x' }] });
    expect(getopt(['--log'])).toEqual({ ok: false, message: "iscsiadm: option '--log' is ambiguous" });
    expect(getopt(['-m'])).toEqual({ ok: false, message: "iscsiadm: option requires an argument -- 'm'" });
  });
});

describe('the node database', () => {
  it('lists without the records another iscsiadm deleted after the directory was read', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'berth-node-db-'));
    const realReadFile = fsp.readFile.bind(fsp);
    const readFile = vi.spyOn(fsp, 'readFile');
    try {
      const db = new NodeDb(path.join(dir, 'etc/iscsi'));
      await db.init();
      const iqn = 'iqn.2026-01.test.berth:mp1';
      const gone = db.newRecord(iqn, '127.0.0.3', 3260, -1);
      for (const record of [db.newRecord(iqn, '127.0.0.1', 3260, -1), gone, db.newRecord(iqn, '127.0.0.2', 3260, 1)]) await db.write(record);
      // The failed path's cleanup deletes its record between this listing's readdir and its read.
      readFile.mockImplementation(async (...args: Parameters<typeof fsp.readFile>) => {
        if (String(args[0]).endsWith('127.0.0.3,3260')) await db.delete(gone);
        return realReadFile(...args);
      });
      expect((await db.list()).map((r) => `${r.address},${r.tpgt}`)).toEqual(['127.0.0.1,-1', '127.0.0.2,1']);
    } finally {
      readFile.mockRestore();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
