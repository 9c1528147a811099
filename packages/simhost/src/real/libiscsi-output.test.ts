import { describe, expect, it } from 'vitest';
import {
  decodeSamLun,
  parseDeviceIdentification,
  parseIscsiLs,
  parseReadCapacity16,
  parseStandardInquiry,
  parseUnitSerialNumber,
} from './libiscsi-output.js';
import { readFixture } from '@berth/testkit/fixtures';
import { wireLun } from '@berth/qemu';

describe('libiscsi output parsers (recorded fixtures)', () => {
  it('reads targets and LUNs from iscsi-ls -s', () => {
    expect(parseIscsiLs(readFixture('iscsi-ls-chap.txt').stdout)).toEqual([
      {
        iqn: 'iqn.2026-01.test.berth:vol1',
        portal: '127.0.0.1:3260',
        tpgt: 1,
        luns: [
          { lun: 0, type: 'STORAGE_ARRAY_CONTROLLER' },
          { lun: 1, type: 'DIRECT_ACCESS' },
        ],
      },
    ]);
    expect(parseIscsiLs(readFixture('iscsi-ls-two-portals.txt').stdout)[0]?.portal).toBe('127.0.0.2:3260');
  });

  it('keeps the per-target login error iscsi-ls -s prints on stdout', () => {
    const [target] = parseIscsiLs(readFixture('iscsi-ls-chap-wrong-password.txt').stdout);
    expect(target?.luns).toEqual([]);
    expect(target?.error).toBe('iscsi_connect failed. Failed to log in to target. Status: Authentication failure(513)');
  });

  it('reads discovery without -s, and nothing from a refused connection', () => {
    expect(parseIscsiLs(readFixture('iscsi-ls-debug.txt').stdout)).toEqual([{ iqn: 'iqn.2026-01.test.berth:vol1', portal: '127.0.0.1:3260', tpgt: 1, luns: [] }]);
    expect(parseIscsiLs(readFixture('iscsi-ls-unreachable-portal.txt').stdout)).toEqual([]);
  });

  it('decodes flat-addressed LUNs the way tgtd encodes them (LUN 300 is printed as 16684), the inverse of wireLun', () => {
    // Observed: `Lun:16684 Type:DIRECT_ACCESS (Size:63M)` for tgtadm --lun 300.
    expect(parseIscsiLs('Target:iqn.x:a Portal:127.0.0.1:3260,1\nLun:16684 Type:DIRECT_ACCESS (Size:63M)\n')[0]?.luns).toEqual([{ lun: 300, type: 'DIRECT_ACCESS' }]);
    expect(decodeSamLun(255)).toBe(255);
    expect(wireLun(300)).toBe(16684);
    expect(wireLun(1)).toBe(1);
    for (const lun of [0, 1, 255, 256, 300, 16383]) expect(decodeSamLun(wireLun(lun))).toBe(lun);
  });

  it('reads the standard INQUIRY with its padding kept', () => {
    expect(parseStandardInquiry(readFixture('iscsi-inq-std-noauth.txt').stdout)).toEqual({
      qualifier: 'CONNECTED',
      deviceType: 'DIRECT_ACCESS',
      version: 5,
      vendor: 'IET     ',
      product: 'VIRTUAL-DISK    ',
      revision: '0001',
    });
    expect(parseStandardInquiry('')).toBeUndefined();
  });

  it('reads the unit serial number field whole (36 bytes, right-aligned)', () => {
    const sn = parseUnitSerialNumber(readFixture('iscsi-inq-vpd80-noauth.txt').stdout);
    expect(sn).toBe(`${' '.repeat(30)}beaf11`);
    expect(sn).toHaveLength(36);
    expect(parseUnitSerialNumber(readFixture('iscsi-inq-vpd80-chap.txt').stdout)).toBe(sn);
  });

  it('reads page 0x83 designators back into the order the target sent them', () => {
    const designators = parseDeviceIdentification(readFixture('iscsi-inq-vpd83-noauth.txt').stdout);
    expect(designators).toEqual([
      { codeSet: 2, piv: 0, association: 0, type: 1, text: 'IET     00010001' },
      { codeSet: 1, piv: 0, association: 0, type: 3, text: '0' },
      { codeSet: 1, piv: 0, association: 0, type: 3, text: '`' },
    ]);
  });

  it('reads READ CAPACITY(16)', () => {
    expect(parseReadCapacity16(readFixture('iscsi-readcapacity16-chap-env.txt').stdout)).toEqual({ lastLba: 131071, blockLength: 512, totalBytes: 67108864 });
    expect(parseReadCapacity16(readFixture('iscsi-readcapacity16-missing-lun.txt').stdout)).toBeUndefined();
  });
});
