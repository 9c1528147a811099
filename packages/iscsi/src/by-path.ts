import { BerthError } from '@berth/core';
import type { Portal } from './portal.js';
import { checkIndex } from './sysfs-read.js';

/**
 * How the target numbers its LUNs in REPORT LUNS, which decides the kernel's LUN number:
 * - `SAM`: the kernel LUN is the target's LUN (peripheral addressing below 256);
 * - `SAM2`: flat addressing from 256 on, so LUN n ≥ 256 is kernel LUN 16384 + n (tgtd does this);
 * - `SAM3-flat`: flat addressing for every LUN (kernel LUN 16384 + n).
 */
export type LunAddressing = 'SAM' | 'SAM2' | 'SAM3-flat';

/** The kernel's LUN number of the target's LUN `lun` (os-brick's lun_for_addressing). */
export function kernelLun(lun: number, addressing: LunAddressing = 'SAM'): number {
  checkIndex(lun, 'LUN');
  if (addressing === 'SAM3-flat' || (addressing === 'SAM2' && lun >= 256)) return lun + 16384;
  return lun;
}

/**
 * The LUN part of a by-path name for kernel LUN `lun`, as udev's path_id writes it: the number
 * below 256, else `0x%04x%04x00000000` of (lun & 0xffff, lun >> 16 & 0xffff).
 */
export function byPathLun(lun: number): string {
  checkIndex(lun, 'LUN');
  if (lun < 256) return String(lun);
  const hex = (n: number): string => n.toString(16).padStart(4, '0');
  return `0x${hex(lun & 0xffff)}${hex(Math.floor(lun / 65536) & 0xffff)}00000000`;
}

/**
 * The udev by-path name of an iSCSI disk: `ip-<address>:<port>-iscsi-<iqn>-lun-<L>`, where the
 * address is the session's persistent address (IPv6 without brackets) and L the kernel LUN.
 */
export function byPathName(portal: Portal, iqn: string, kernelLunNumber: number): string {
  const address = portal.host.replace(/^\[(.*)\]$/, '$1');
  if (/[\s/]/.test(address) || /[\s/]/.test(iqn) || iqn === '') {
    throw new BerthError('VALIDATION', `cannot make a by-path name from ${JSON.stringify(address)} and ${JSON.stringify(iqn)}`);
  }
  return `ip-${address}:${portal.port}-iscsi-${iqn}-lun-${byPathLun(kernelLunNumber)}`;
}

/** The by-path link `/dev/disk/by-path/ip-…-iscsi-…-lun-L` of an iSCSI disk. */
export function byPathLink(portal: Portal, iqn: string, kernelLunNumber: number): string {
  return `/dev/disk/by-path/${byPathName(portal, iqn, kernelLunNumber)}`;
}

