/**
 * What tgtd (1.0.85) answers about its logical units, as a Linux initiator sees it
 * (KERNEL-MODEL §6): INQUIRY strings, VPD pages 0x80 and 0x83, and the names the kernel and
 * udev derive from them.
 */

/** The INQUIRY and VPD identity of one logical unit. */
export interface LunIdentity {
  /** SCSI peripheral device type: 0 disk, 12 (0x0c) storage array controller. */
  type: number;
  /** INQUIRY vendor, product and revision, space padded as sysfs shows them. */
  vendor: string;
  model: string;
  rev: string;
  /** The kernel's `wwid` file content without the newline (`naa.6…`). */
  wwid: string;
  /** Raw VPD pages, with their 4-byte headers. */
  vpdPg83: Buffer;
  vpdPg80: Buffer;
  /** The unit serial number (page 0x80) without padding. */
  serial: string;
}

/** tgtd's default `scsi_id` of LU `lun` on target `tid`: `IET` + 5 spaces + `%04x%04x`. */
export function tgtScsiId(tid: number, lun: number): string {
  return `IET     ${hex(tid, 4)}${hex(lun, 4)}`;
}

/** tgtd's default `scsi_sn`: `beaf<tid><lun>` in decimal. */
export function tgtScsiSerial(tid: number, lun: number): string {
  return `beaf${tid}${lun}`;
}

/** The identity tgtd gives LU `lun` of target `tid` (LUN 0 is the controller). */
export function tgtLunIdentity(tid: number, lun: number, options: { scsiId?: string; scsiSerial?: string } = {}): LunIdentity {
  const controller = lun === 0;
  const type = controller ? 0x0c : 0;
  const scsiId = options.scsiId ?? tgtScsiId(tid, lun);
  const serial = options.scsiSerial ?? tgtScsiSerial(tid, lun);
  const naa6 = naaType6(scsiId);
  return {
    type,
    vendor: pad('IET', 8),
    model: pad(controller ? 'Controller' : 'VIRTUAL-DISK', 16),
    rev: pad('0001', 4),
    wwid: `naa.${naa6.toString('hex')}`,
    vpdPg83: vpdPage83(type, scsiId, naaType3(tid, lun), naa6),
    vpdPg80: vpdPage80(type, serial),
    serial,
  };
}

/** udev's `ID_SERIAL` (and the `scsi-` link name) for a kernel wwid: `naa.` → `3`, `eui.` → `2`, `t10.` → `1`. */
export function idSerialOf(wwid: string): string {
  if (wwid.startsWith('naa.')) return `3${wwid.slice(4)}`;
  if (wwid.startsWith('eui.')) return `2${wwid.slice(4)}`;
  if (wwid.startsWith('t10.')) return `1${wwid.slice(4).replace(/\s+/g, '_')}`;
  return `8${wwid}`;
}

/** udev's `wwn-0x…` link name for a kernel wwid, or undefined when it has none (t10 designators). */
export function wwnLinkOf(wwid: string): string | undefined {
  if (wwid.startsWith('naa.') || wwid.startsWith('eui.')) return `wwn-0x${wwid.slice(4)}`;
  return undefined;
}

function hex(value: number, width: number): string {
  return value.toString(16).padStart(width, '0');
}

function pad(text: string, width: number): string {
  return text.padEnd(width, ' ').slice(0, width);
}

/** NAA type 3, 8 bytes: (tid << 32 | lun) with the top nibble 3. */
function naaType3(tid: number, lun: number): Buffer {
  const buf = Buffer.alloc(8);
  buf.writeUInt32BE(tid >>> 0, 0);
  buf.writeUInt32BE(lun >>> 0, 4);
  buf[0] = (buf[0]! & 0x0f) | 0x30;
  return buf;
}

/** NAA type 6, 16 bytes: each scsi_id character as a hex nibble (non-hex → 0), top nibble 6. */
function naaType6(scsiId: string): Buffer {
  const nibbles = [...scsiId].map((c) => (/^[0-9a-fA-F]$/.test(c) ? c.toLowerCase() : '0')).join('');
  const last = nibbles.slice(-32).padStart(32, '0');
  return Buffer.from(`6${last.slice(1)}`, 'hex');
}

function designator(codeSet: number, type: number, value: Buffer): Buffer {
  // Byte 1: PIV 0, association 0 (logical unit), designator type.
  return Buffer.concat([Buffer.from([codeSet & 0x0f, type & 0x0f, 0, value.length]), value]);
}

function vpdPage83(deviceType: number, scsiId: string, naa3: Buffer, naa6: Buffer): Buffer {
  const t10 = Buffer.alloc(36);
  t10.write(scsiId, 'ascii');
  const body = Buffer.concat([designator(2, 1, t10), designator(1, 3, naa3), designator(1, 3, naa6)]);
  const header = Buffer.from([deviceType, 0x83, (body.length >> 8) & 0xff, body.length & 0xff]);
  return Buffer.concat([header, body]);
}

function vpdPage80(deviceType: number, serial: string): Buffer {
  const field = Buffer.from(serial.padStart(36, ' ').slice(-36), 'ascii');
  return Buffer.concat([Buffer.from([deviceType, 0x80, 0, field.length]), field]);
}
