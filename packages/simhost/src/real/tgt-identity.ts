/**
 * The identity of a tgtd LUN as the kernel would read it (KERNEL-MODEL §6, tgt usr/spc.c): VPD
 * page 0x80 (the serial, right-aligned in 36 bytes), page 0x83 (T10 vendor id, NAA 3 from tid and
 * LUN, NAA 6 from the scsi_id's hex nibbles) and the kernel's `wwid` (the NAA 6 designator).
 *
 * libiscsi prints binary designators as C strings, so the NAA bytes cannot be read from
 * `iscsi-inq`; they are computed here from the printed T10 id and checked against what libiscsi
 * did print (the bytes up to the first NUL).
 */
import { BerthError } from '@berth/core';
import { deviceTypeNumber, type PrintedDesignator, type StandardInquiry } from './libiscsi-output.js';

/** tgtd's SCSI_ID_LEN and SCSI_SN_LEN. */
const FIELD_LEN = 36;
const MASK64 = (1n << 64n) - 1n;

const CODE_SET_BINARY = 1;
const CODE_SET_ASCII = 2;
const DESIGNATOR_T10 = 1;
const DESIGNATOR_NAA = 3;

/** Everything the kernel model shows about a LUN. */
export interface LunIdentity {
  /** SCSI peripheral device type: 0 for a disk, 12 (0x0c) for tgtd's controller at LUN 0. */
  type: number;
  /** INQUIRY strings, padded (`IET     `, `VIRTUAL-DISK    `, `0001`). */
  vendor: string;
  model: string;
  rev: string;
  /** tgtd's `scsi_id` (`IET     00010001`) and `scsi_sn` (`beaf11`). */
  scsiId: string;
  scsiSn: string;
  /** `naa.6…`: what the kernel puts in `device/wwid`. */
  wwid: string;
  /** Raw VPD pages with their 4-byte headers. */
  vpdPg80: Buffer;
  vpdPg83: Buffer;
}

/** VPD page 0x80 as tgtd sends it: the serial right-aligned in a 36-byte field of spaces. */
export function tgtVpdPg80(scsiSn: string, deviceType = 0): Buffer {
  const field = Buffer.alloc(FIELD_LEN, 0x20);
  const sn = Buffer.from(scsiSn, 'latin1').subarray(-FIELD_LEN);
  sn.copy(field, FIELD_LEN - sn.length);
  return Buffer.concat([Buffer.from([deviceType & 0x1f, 0x80, 0, FIELD_LEN]), field]);
}

/** The 16-byte NAA 6 designator tgtd derives from `scsiId`: each character as a hex nibble (non-hex → 0). */
export function tgtNaa6(scsiId: string): Buffer {
  let a = 0n;
  let b = 0n;
  for (const ch of scsiId.slice(0, FIELD_LEN)) {
    const c = a >> 60n;
    a = (a << 4n) & MASK64;
    b = ((b << 4n) | c) & MASK64;
    const nibble = /^[0-9a-fA-F]$/.test(ch) ? Number.parseInt(ch, 16) : 0;
    a |= BigInt(nibble);
  }
  const out = Buffer.alloc(16);
  out.writeBigUInt64BE(b, 0);
  out.writeBigUInt64BE(a, 8);
  out[0] = ((out[0] ?? 0) & 0x0f) | 0x60;
  return out;
}

/** The 8-byte NAA 3 (locally assigned) designator: tid << 32 | lun, top nibble 3. */
export function tgtNaa3(tid: number, lun: number): Buffer {
  const out = Buffer.alloc(8);
  out.writeBigUInt64BE(((BigInt(tid) << 32n) | BigInt(lun)) & MASK64, 0);
  out[0] = (out[0] ?? 0) | 0x30;
  return out;
}

/** VPD page 0x83 as tgtd sends it: T10 vendor id, NAA 3, NAA 6 (72 bytes after the header). */
export function tgtVpdPg83(scsiId: string, tid: number, lun: number, deviceType = 0): Buffer {
  const t10 = Buffer.alloc(FIELD_LEN); // strncpy pads with NULs
  Buffer.from(scsiId, 'latin1').copy(t10, 0, 0, FIELD_LEN);
  const body = Buffer.concat([
    Buffer.from([CODE_SET_ASCII, DESIGNATOR_T10, 0, FIELD_LEN]),
    t10,
    Buffer.from([CODE_SET_BINARY, DESIGNATOR_NAA, 0, 8]),
    tgtNaa3(tid, lun),
    Buffer.from([CODE_SET_BINARY, DESIGNATOR_NAA, 0, 16]),
    tgtNaa6(scsiId),
  ]);
  return Buffer.concat([Buffer.from([deviceType & 0x1f, 0x83, body.length >> 8, body.length & 0xff]), body]);
}

/** The kernel's wwid for a tgtd LUN: `naa.` + the NAA 6 designator in hex. */
export function tgtWwid(scsiId: string): string {
  return `naa.${tgtNaa6(scsiId).toString('hex')}`;
}

/** How libiscsi prints a binary designator: its bytes up to the first NUL, as a C string. */
export function printedAsCString(bytes: Buffer): string {
  const nul = bytes.indexOf(0);
  // Decoded as berth's command runner decodes a tool's stdout (UTF-8, a byte that is not part of
  // a character becoming U+FFFD): an `scsi_id` of hex digits (the tgt backend's, the volume id)
  // makes an NAA 6 value of bytes above 0x7f, which `latin1` would spell otherwise.
  return (nul < 0 ? bytes : bytes.subarray(0, nul)).toString('utf8');
}

/**
 * The target id behind a LUN, from tgtd's default names: `scsi_id` `IET     <tid %04x><lun %04x>`,
 * else `scsi_sn` `beaf<tid><lun>`. Undefined when both were changed with `tgtadm --op update`.
 */
export function tgtTidOf(scsiId: string, scsiSn: string, lun: number): number | undefined {
  const id = /^IET {5}([0-9a-f]{4})([0-9a-f]{4})$/.exec(scsiId);
  if (id && Number.parseInt(id[2] ?? '', 16) === lun) return Number.parseInt(id[1] ?? '', 16);
  const sn = /^beaf(\d+)$/.exec(scsiSn);
  const digits = sn?.[1];
  if (digits && digits.endsWith(String(lun)) && digits.length > String(lun).length) return Number(digits.slice(0, -String(lun).length));
  return undefined;
}

/**
 * Build a LUN's identity from `iscsi-inq`'s standard INQUIRY, serial field and page 0x83
 * designators, and check the computed NAA designators against the prefixes libiscsi printed.
 * `tid` overrides the target id read from tgtd's default names.
 */
export function identityFromInquiry(input: {
  lun: number;
  inquiry: StandardInquiry;
  serialField: string;
  designators: PrintedDesignator[];
  tid?: number;
}): LunIdentity {
  const t10 = input.designators.find((d) => d.type === DESIGNATOR_T10);
  if (!t10) {
    throw new BerthError('DRIVER_ERROR', `LUN ${input.lun} has no T10 vendor id designator in VPD page 0x83: real-backed mode expects a tgtd target`, {
      details: { lun: input.lun },
    });
  }
  const scsiId = t10.text;
  const scsiSn = input.serialField.trim();
  const tid = input.tid ?? tgtTidOf(scsiId, scsiSn, input.lun);
  if (tid === undefined) {
    throw new BerthError('DRIVER_ERROR', `cannot tell the target id of LUN ${input.lun} (scsi_id ${JSON.stringify(scsiId)}, scsi_sn ${JSON.stringify(scsiSn)})`, {
      hint: 'keep tgtd\'s default scsi_id or scsi_sn, or pass the tid to RealTargetAccess',
    });
  }
  const type = deviceTypeNumber(input.inquiry.deviceType);
  const vpdPg83 = tgtVpdPg83(scsiId, tid, input.lun, type);
  // What libiscsi would print for the computed page, in the page's order (NAA 3 then NAA 6).
  const printed = input.designators.filter((d) => d.type === DESIGNATOR_NAA).map((d) => d.text);
  const expected = [printedAsCString(tgtNaa3(tid, input.lun)), printedAsCString(tgtNaa6(scsiId))];
  if (printed.length !== 2 || printed[0] !== expected[0] || printed[1] !== expected[1]) {
    throw new BerthError('DRIVER_ERROR', `VPD page 0x83 of LUN ${input.lun} is not tgtd's: NAA designators printed ${JSON.stringify(printed)}, computed ${JSON.stringify(expected)}`, {
      details: { lun: input.lun, scsiId },
    });
  }
  return {
    type,
    vendor: input.inquiry.vendor,
    model: input.inquiry.product,
    rev: input.inquiry.revision,
    scsiId,
    scsiSn,
    wwid: tgtWwid(scsiId),
    vpdPg80: Buffer.concat([Buffer.from([type, 0x80, 0, Buffer.byteLength(input.serialField, 'latin1')]), Buffer.from(input.serialField, 'latin1')]),
    vpdPg83,
  };
}
