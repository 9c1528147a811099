import { describe, expect, it } from 'vitest';
import { byPathLink, byPathLun, byPathName, kernelLun } from './by-path.js';
import { parsePortal } from './portal.js';

const VOL1 = 'iqn.2026-01.test.berth:vol1';

describe('by-path names (udev path_id)', () => {
  it('names an IPv4 LUN below 256 with its number', () => {
    expect(byPathName(parsePortal('127.0.0.1:3260'), VOL1, 1)).toBe(`ip-127.0.0.1:3260-iscsi-${VOL1}-lun-1`);
    expect(byPathLink({ host: '10.0.0.5', port: 3261 }, VOL1, 0)).toBe(`/dev/disk/by-path/ip-10.0.0.5:3261-iscsi-${VOL1}-lun-0`);
  });

  it('writes IPv6 without brackets', () => {
    expect(byPathName(parsePortal('[fe80::1]:3260'), VOL1, 3)).toBe(`ip-fe80::1:3260-iscsi-${VOL1}-lun-3`);
    expect(byPathName({ host: '[2001:db8::5]', port: 3260 }, VOL1, 3)).toBe(`ip-2001:db8::5:3260-iscsi-${VOL1}-lun-3`);
  });

  it('writes LUN 256 and above as 0x%04x%04x00000000 of the kernel LUN', () => {
    expect(byPathLun(255)).toBe('255');
    expect(byPathLun(256)).toBe('0x0100000000000000');
    // tgtd's LUN 256 is kernel LUN 16640 (flat addressing): 0x4100.
    expect(kernelLun(256, 'SAM2')).toBe(16640);
    expect(byPathLun(kernelLun(256, 'SAM2'))).toBe('0x4100000000000000');
    expect(byPathName(parsePortal('127.0.0.1'), VOL1, kernelLun(300, 'SAM2'))).toBe(`ip-127.0.0.1:3260-iscsi-${VOL1}-lun-0x412c000000000000`);
    expect(byPathLun(0x12345678)).toBe('0x5678123400000000');
  });

  it('maps target LUNs to kernel LUNs per addressing mode', () => {
    expect(kernelLun(1)).toBe(1);
    expect(kernelLun(255, 'SAM2')).toBe(255);
    expect(kernelLun(1, 'SAM3-flat')).toBe(16385);
    expect(kernelLun(300, 'SAM')).toBe(300);
  });
});
