/**
 * Parsers for what libiscsi 1.19's tools (`iscsi-ls`, `iscsi-inq`, `iscsi-readcapacity16`) print.
 * The formats are the recorded ones in the shared fixtures (`iscsi-ls-*`, `iscsi-inq-*`,
 * `iscsi-readcapacity16-*`).
 */

/** One LUN line of `iscsi-ls -s`: `Lun:1    Type:DIRECT_ACCESS (Size:63M)`. */
export interface ListedLun {
  /** The target's LUN number (flat-addressed LUNs decoded: 16684 → 300). */
  lun: number;
  /** libiscsi's device type name (`DIRECT_ACCESS`, `STORAGE_ARRAY_CONTROLLER`, ...). */
  type: string;
}

/** One target block of `iscsi-ls [-s]`. */
export interface ListedTarget {
  iqn: string;
  /** The portal the target returned in SendTargets, without the tag (`127.0.0.1:3260`). */
  portal: string;
  tpgt: number;
  /** LUNs, with `-s` and when the login to the target worked. */
  luns: ListedLun[];
  /** The `list_luns: ...` line `iscsi-ls -s` prints (on stdout) when the login to this target failed. */
  error?: string;
}

/**
 * The target LUN number of a LUN as libiscsi prints it: the first two bytes of the 8-byte SAM LUN.
 * tgtd uses peripheral addressing up to 255 and flat addressing (method 01, `0x4000 | lun`) above.
 */
export function decodeSamLun(value: number): number {
  const method = (value >> 14) & 0x3;
  return method === 1 ? value & 0x3fff : value & 0xff;
}

/** Parse `iscsi-ls` (with or without `-s`) stdout into its target blocks. */
export function parseIscsiLs(stdout: string): ListedTarget[] {
  const targets: ListedTarget[] = [];
  let current: ListedTarget | undefined;
  for (const line of stdout.split('\n')) {
    const target = /^Target:(\S+) Portal:(\S+),(\d+)$/.exec(line);
    if (target) {
      current = { iqn: target[1] ?? '', portal: target[2] ?? '', tpgt: Number(target[3]), luns: [] };
      targets.push(current);
      continue;
    }
    const lun = /^Lun:(\d+)\s+Type:(\S+)/.exec(line);
    if (lun && current) {
      current.luns.push({ lun: decodeSamLun(Number(lun[1])), type: lun[2] ?? '' });
      continue;
    }
    if (line.startsWith('list_luns:') && current) current.error = line.slice('list_luns:'.length).trim();
  }
  return targets;
}

/** The fields of a standard INQUIRY as `iscsi-inq` prints them (strings keep their padding). */
export interface StandardInquiry {
  /** `CONNECTED`, `NOT_CONNECTED`, ... */
  qualifier: string;
  /** libiscsi's device type name: `DIRECT_ACCESS` for a disk, `STORAGE_ARRAY_CONTROLLER` for tgtd's LUN 0. */
  deviceType: string;
  /** The SPC version number (`5` for SPC-3). */
  version: number | undefined;
  vendor: string;
  product: string;
  revision: string;
}

function fields(stdout: string): Map<string, string> {
  const map = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const key = line.slice(0, colon);
    // The first occurrence wins: designator blocks repeat their keys.
    if (!map.has(key)) map.set(key, line.slice(colon + 1));
  }
  return map;
}

// libiscsi's names of the SCSI peripheral device types (scsi_devtype_to_str), as numbers.
const DEVICE_TYPES: Record<string, number> = {
  DIRECT_ACCESS: 0x00,
  SEQUENTIAL_ACCESS: 0x01,
  PRINTER: 0x02,
  PROCESSOR: 0x03,
  WRITE_ONCE: 0x04,
  MMC: 0x05,
  SCANNER: 0x06,
  OPTICAL_MEMORY: 0x07,
  MEDIA_CHANGER: 0x08,
  COMMUNICATIONS: 0x09,
  STORAGE_ARRAY_CONTROLLER: 0x0c,
  ENCLOSURE_SERVICES: 0x0d,
  SIMPLIFIED_DIRECT_ACCESS: 0x0e,
  OPTICAL_CARD_READER: 0x0f,
  BRIDGE_CONTROLLER: 0x10,
  OSD: 0x11,
  AUTOMATION: 0x12,
  SEQURITY_MANAGER: 0x13,
  WELL_KNOWN_LUN: 0x1e,
  UNKNOWN: 0x1f,
};

/** The peripheral device type number of a libiscsi device type name (0x1f, unknown, for a name it does not know). */
export function deviceTypeNumber(name: string): number {
  return DEVICE_TYPES[name] ?? 0x1f;
}

/** Parse `iscsi-inq` (no `-e`) stdout; undefined when it holds no INQUIRY. */
export function parseStandardInquiry(stdout: string): StandardInquiry | undefined {
  const f = fields(stdout);
  const deviceType = f.get('Peripheral Device Type');
  const vendor = f.get('Vendor');
  if (deviceType === undefined || vendor === undefined) return undefined;
  const version = /^(\d+)/.exec(f.get('Version') ?? '');
  return {
    qualifier: f.get('Peripheral Qualifier') ?? '',
    deviceType,
    version: version ? Number(version[1]) : undefined,
    vendor,
    product: f.get('Product') ?? '',
    revision: f.get('Revision') ?? '',
  };
}

/** The serial number field of `iscsi-inq -e 1 -c 128`, padding kept; undefined when absent. */
export function parseUnitSerialNumber(stdout: string): string | undefined {
  const match = /^Unit Serial Number:\[(.*)\]$/m.exec(stdout);
  return match?.[1];
}

/** One designator of `iscsi-inq -e 1 -c 131` (page 0x83). */
export interface PrintedDesignator {
  codeSet: number;
  piv: number;
  association: number;
  type: number;
  /**
   * The designator as libiscsi printed it: a C string, so binary designators are cut at their
   * first NUL byte (`` ` `` for an NAA 6 value that starts 0x60 0x00).
   */
  text: string;
}

/**
 * Parse the designators of `iscsi-inq -e 1 -c 131`. libiscsi prints them in the reverse of the
 * page's order (it prepends each to a list while reading), so the result is reversed back to the
 * order the target sent.
 */
export function parseDeviceIdentification(stdout: string): PrintedDesignator[] {
  const out: PrintedDesignator[] = [];
  const blocks = stdout.split(/^DEVICE DESIGNATOR #\d+\n/m).slice(1);
  for (const block of blocks) {
    const num = (re: RegExp): number => Number(re.exec(block)?.[1] ?? Number.NaN);
    const text = /^Designator:\[([\s\S]*?)\]$/m.exec(block);
    out.push({
      codeSet: num(/^Code Set:\((\d+)\)/m),
      piv: num(/^PIV:(\d+)/m),
      association: num(/^Association:\((\d+)\)/m),
      type: num(/^Designator Type:\((\d+)\)/m),
      text: text?.[1] ?? '',
    });
  }
  return out.reverse();
}

/** What `iscsi-readcapacity16` prints. */
export interface ReadCapacity16 {
  lastLba: number;
  blockLength: number;
  totalBytes: number;
}

/** Parse `iscsi-readcapacity16` stdout; undefined when it holds no capacity. */
export function parseReadCapacity16(stdout: string): ReadCapacity16 | undefined {
  const f = fields(stdout);
  const total = f.get('Total size');
  const lba = f.get('RETURNED LOGICAL BLOCK ADDRESS');
  const block = f.get('LOGICAL BLOCK LENGTH IN BYTES');
  if (total === undefined || lba === undefined || block === undefined) return undefined;
  return { lastLba: Number(lba), blockLength: Number(block), totalBytes: Number(total) };
}
