import { describe, expect, it } from 'vitest';
import { parseDeviceIdentification, parseStandardInquiry, parseUnitSerialNumber } from './libiscsi-output.js';
import { readFixture } from '@berth/testkit/fixtures';
import { identityFromInquiry, printedAsCString, tgtNaa3, tgtNaa6, tgtTidOf, tgtVpdPg80, tgtVpdPg83, tgtWwid } from './tgt-identity.js';

describe("tgtd's LUN identity (KERNEL-MODEL §6)", () => {
  it('gives the wwid and links of tid 1, lun 1', () => {
    expect(tgtWwid('IET     00010001')).toBe('naa.60000000000000000e00000000010001');
  });

  it('builds NAA 3 from tid and LUN and NAA 6 from the scsi_id nibbles (E is a hex digit, I and T are not)', () => {
    expect(tgtNaa3(1, 1).toString('hex')).toBe('3000000100000001');
    expect(tgtNaa3(2, 300).toString('hex')).toBe('300000020000012c');
    expect(tgtNaa6('IET     0002012c').toString('hex')).toBe('60000000000000000e0000000002012c');
    // A 32-hex-digit scsi_id gives naa.6 followed by the id without its first digit.
    expect(tgtWwid('0123456789abcdef0123456789abcdef')).toBe('naa.6123456789abcdef0123456789abcdef');
  });

  it('lays out page 0x83 as tgtd does: T10 id (36 bytes, NUL-padded), NAA 3, NAA 6', () => {
    const page = tgtVpdPg83('IET     00010001', 1, 1);
    expect(page.length).toBe(4 + 72);
    expect([...page.subarray(0, 8)]).toEqual([0, 0x83, 0, 72, 2, 1, 0, 36]);
    expect(page.subarray(8, 24).toString('latin1')).toBe('IET     00010001');
    expect(page.subarray(24, 44).equals(Buffer.alloc(20))).toBe(true);
    expect([...page.subarray(44, 48)]).toEqual([1, 3, 0, 8]);
    expect(page.subarray(48, 56).toString('hex')).toBe('3000000100000001');
    expect([...page.subarray(56, 60)]).toEqual([1, 3, 0, 16]);
    expect(page.subarray(60).toString('hex')).toBe('60000000000000000e00000000010001');
  });

  it('lays out page 0x80 as the serial right-aligned in 36 spaces', () => {
    const page = tgtVpdPg80('beaf11');
    expect([...page.subarray(0, 4)]).toEqual([0, 0x80, 0, 36]);
    expect(page.subarray(4).toString('latin1')).toBe(`${' '.repeat(30)}beaf11`);
  });

  it('reads the tid from the default scsi_id, else from the default serial', () => {
    expect(tgtTidOf('IET     00010001', 'beaf11', 1)).toBe(1);
    expect(tgtTidOf('IET     0002012c', 'beaf2300', 300)).toBe(2);
    expect(tgtTidOf('custom', 'beaf12300', 300)).toBe(12);
    expect(tgtTidOf('custom', 'custom', 1)).toBeUndefined();
  });

  it('matches what iscsi-inq printed for the recorded LUN (NAA bytes up to the first NUL)', () => {
    const identity = identityFromInquiry({
      lun: 1,
      inquiry: parseStandardInquiry(readFixture('iscsi-inq-std-noauth.txt').stdout)!,
      serialField: parseUnitSerialNumber(readFixture('iscsi-inq-vpd80-noauth.txt').stdout)!,
      designators: parseDeviceIdentification(readFixture('iscsi-inq-vpd83-noauth.txt').stdout),
    });
    expect(identity).toMatchObject({
      vendor: 'IET     ',
      model: 'VIRTUAL-DISK    ',
      rev: '0001',
      scsiId: 'IET     00010001',
      scsiSn: 'beaf11',
      wwid: 'naa.60000000000000000e00000000010001',
    });
    expect(identity.vpdPg83.equals(tgtVpdPg83('IET     00010001', 1, 1))).toBe(true);
    expect(identity.vpdPg80.equals(tgtVpdPg80('beaf11'))).toBe(true);
    expect(printedAsCString(tgtNaa6('IET     00010001'))).toBe('`');
    expect(printedAsCString(tgtNaa3(1, 1))).toBe('0');
    // The tgt backend's scsi_id (a volume id's hex digits): bytes above 0x7f, as the runner decodes them.
    expect(printedAsCString(tgtNaa6('551c7570c60140daa90b272d01929ba6'))).toBe(Buffer.from([0x65, 0x1c, 0x75, 0x70, 0xc6, 0x01, 0x40, 0xda, 0xa9, 0x0b, 0x27, 0x2d, 0x01, 0x92, 0x9b, 0xa6]).toString('utf8'));
    expect(tgtWwid('551c7570c60140daa90b272d01929ba6')).toBe('naa.651c7570c60140daa90b272d01929ba6');
  });

  it('refuses a page 0x83 that is not tgtd-shaped', () => {
    const designators = parseDeviceIdentification(readFixture('iscsi-inq-vpd83-noauth.txt').stdout).map((d) => (d.type === 3 ? { ...d, text: 'x' } : d));
    expect(() =>
      identityFromInquiry({
        lun: 1,
        inquiry: parseStandardInquiry(readFixture('iscsi-inq-std-noauth.txt').stdout)!,
        serialField: `${' '.repeat(30)}beaf11`,
        designators,
      }),
    ).toThrow(/not tgtd's/);
  });
});
