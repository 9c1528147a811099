import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';

/** What the kernel appends to a loop device's back-file when the file was unlinked while attached. */
export const DELETED_SUFFIX = ' (deleted)';

/** One attached loop device, as `losetup --json --list` reports it. */
export interface LoopDevice {
  /** The device node (`/dev/loop0`). */
  name: string;
  /** The backing file's path without the ` (deleted)` suffix; null when losetup shows none. */
  backingFile: string | null;
  /** True when the backing file was unlinked while attached (the path now names another file or none). */
  deleted: boolean;
  readOnly: boolean;
  directIo: boolean;
  offset: number;
  sizeLimit: number;
  autoclear: boolean;
  /** Logical sector size in bytes. */
  logicalSectorSize: number | null;
  /** The loop device's own number (`7:3`), when listed. */
  rdev?: string;
  /** The backing file's file system device (`254:0`) and inode, as the kernel holds them open. */
  backingDev?: string;
  backingInode?: number;
  /** The backing inode as losetup or the kernel printed it: exact, where `backingInode` may round. */
  backingInodeText?: string;
}

/** The columns berth asks `losetup --json --list` for: the usual ones plus what identifies a device. */
export const LIST_COLUMNS = 'NAME,MAJ:MIN,BACK-FILE,BACK-INO,BACK-MAJ:MIN,OFFSET,SIZELIMIT,AUTOCLEAR,RO,DIO,LOG-SEC';

// losetup prints numbers and booleans as JSON values, but older util-linux printed them as strings.
const zFlag = lazySchema(() => z.union([z.boolean(), z.enum(['0', '1']).transform((v) => v === '1'), z.literal(0), z.literal(1)]).transform(Boolean));
const zCount = lazySchema(() => z.union([z.number(), z.string().regex(/^\d+$/).transform(Number)]));

const zLosetupDevice = lazySchema(() => z.looseObject({
  name: z.string().regex(/^\/dev\/loop\d+$/, 'not a loop device node'),
  'back-file': z.string().nullable().optional(),
  // A column the kernel cannot read is null: a device it is tearing down answers ENODEV to sysfs
  // reads, and losetup prints null for it (seen in CI while another device was being detached).
  ro: zFlag.nullable().optional(),
  dio: zFlag.nullable().optional(),
  autoclear: zFlag.nullable().optional(),
  offset: zCount.nullable().optional(),
  sizelimit: zCount.nullable().optional(),
  'log-sec': zCount.nullable().optional(),
  'maj:min': z.string().nullable().optional(),
  // Kept as text (see parseLosetupList): an inode above 2^53 does not survive a JSON number.
  'back-ino': z.union([z.string().regex(/^\d+$/), z.number().int().nonnegative().transform(String)]).nullable().optional(),
  'back-maj:min': z.string().nullable().optional(),
}));

const zLosetupList = lazySchema(() => z.object({ loopdevices: z.array(zLosetupDevice) }));

/**
 * A device number as `MAJ:MIN`, decoded as glibc's `major()`/`minor()` do (12 + 20 bits in the
 * kernel's encoding: a minor of 256 or more is not `dev % 256`).
 */
export function majorMinor(dev: bigint): string {
  const major = ((dev & 0xfff00n) >> 8n) | ((dev & 0xfffff00000000000n) >> 32n);
  const minor = (dev & 0xffn) | ((dev & 0xffffff00000n) >> 12n);
  return `${major}:${minor}`;
}

/** Split a back-file into the path and whether it was deleted. */
export function parseBackFile(backFile: string | null | undefined): { backingFile: string | null; deleted: boolean } {
  if (backFile === null || backFile === undefined || backFile === '') return { backingFile: null, deleted: false };
  if (backFile.endsWith(DELETED_SUFFIX)) {
    return { backingFile: backFile.slice(0, -DELETED_SUFFIX.length), deleted: true };
  }
  return { backingFile: backFile, deleted: false };
}

/**
 * Parse `losetup --json --list`. Empty output (some util-linux versions print nothing when no
 * device is attached) and the empty array are both "no devices".
 */
export function parseLosetupList(stdout: string): LoopDevice[] {
  if (stdout.trim() === '') return [];
  let json: unknown;
  try {
    // losetup prints BACK-INO as a JSON number: quoted first, so that an inode above 2^53 (overlayfs
    // with xino, some network filesystems) reaches berth-loop-detach exactly, not rounded.
    json = JSON.parse(stdout.replace(/("back-ino"\s*:\s*)(\d+)/g, '$1"$2"'));
  } catch (error) {
    throw new Error(`losetup --json --list printed something that is not JSON: ${stdout.slice(0, 200)}`, { cause: error });
  }
  const parsed = zLosetupList.safeParse(json);
  if (!parsed.success) {
    throw new Error(`losetup --json --list printed an unexpected shape: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  return parsed.data.loopdevices.map((raw) => {
    // losetup pads MAJ:MIN columns with spaces ("  7:1  ").
    const rdev = raw['maj:min']?.trim();
    const backingDev = raw['back-maj:min']?.trim();
    const backingInodeText = raw['back-ino'] ?? undefined;
    return {
      name: raw.name,
      ...parseBackFile(raw['back-file']),
      readOnly: raw.ro ?? false,
      directIo: raw.dio ?? false,
      autoclear: raw.autoclear ?? false,
      offset: raw.offset ?? 0,
      sizeLimit: raw.sizelimit ?? 0,
      logicalSectorSize: raw['log-sec'] ?? null,
      ...(rdev ? { rdev } : {}),
      ...(backingDev ? { backingDev } : {}),
      ...(backingInodeText !== undefined ? { backingInode: Number(backingInodeText), backingInodeText } : {}),
    };
  });
}

/**
 * What identifies a loop device instance: its number, the backing file's device and inode, and the
 * window of the file it maps. A loop number is reused for the next file attached; these together are not.
 */
export function loopIdentity(device: LoopDevice): Record<string, string | number> | undefined {
  if (device.rdev === undefined || device.backingDev === undefined || device.backingInode === undefined) return undefined;
  return {
    kind: 'loop',
    rdev: device.rdev,
    backingDev: device.backingDev,
    backingInode: device.backingInode,
    offset: device.offset,
    sizeLimit: device.sizeLimit,
  };
}

/** Parse `fuser DEV`'s stdout: the ids of the processes that have it open (` 1234 5678m`). Shared: `@berth/host`. */
export { parseFuserPids } from '@berth/host';

/** Parse `losetup --find --show FILE`: the one device node it attached. */
export function parseFindShow(stdout: string): string {
  const device = stdout.trim();
  if (!/^\/dev\/loop\d+$/.test(device)) {
    throw new Error(`losetup --find --show printed ${JSON.stringify(stdout.slice(0, 200))}, not a loop device`);
  }
  return device;
}

/** lo_flags bits (linux/loop.h) that berth-loop-attach prints. */
const LO_FLAGS_READ_ONLY = 1;
const LO_FLAGS_AUTOCLEAR = 4;
const LO_FLAGS_DIRECT_IO = 16;

/**
 * What berth-loop-attach answered (src/native/berth-loop-attach.c), from its last stdout line:
 * a device it attached or found attached (`backingFile` is the file it was given), `free` when it
 * was cut short after finding none (it may have attached), `no-permission`, `failed`/`undone`
 * (the step and errno), `undo-failed` (the device, the step and errnos: it may still back the
 * file), or `undefined` when it printed nothing berth knows.
 */
export type AttachAnswer =
  | { kind: 'attached' | 'existing'; device: LoopDevice }
  | { kind: 'free' | 'no-permission' }
  | { kind: 'failed' | 'undone' | 'undo-failed'; reason: string };

const ATTACH_DEVICE_LINE = /^(attached|existing) (\/dev\/loop\d+) (\d+:\d+) (\d+:\d+) (\d+) (\d+) (\d+) (\d+)$/;

/** Parse berth-loop-attach's stdout (see `AttachAnswer`). */
export function parseAttachAnswer(stdout: string, backingFile: string): AttachAnswer | undefined {
  const line = stdout.trim().split('\n').pop()?.trim() ?? '';
  const match = ATTACH_DEVICE_LINE.exec(line);
  if (match) {
    const [, kind, name = '', rdev = '', backingDev = '', inode = '', offset = '', sizeLimit = '', flags = ''] = match;
    const bits = Number(flags);
    return {
      kind: kind === 'attached' ? 'attached' : 'existing',
      device: {
        name,
        backingFile,
        deleted: false,
        readOnly: (bits & LO_FLAGS_READ_ONLY) !== 0,
        directIo: (bits & LO_FLAGS_DIRECT_IO) !== 0,
        autoclear: (bits & LO_FLAGS_AUTOCLEAR) !== 0,
        offset: Number(offset),
        sizeLimit: Number(sizeLimit),
        logicalSectorSize: null,
        rdev,
        backingDev,
        backingInode: Number(inode),
        backingInodeText: inode,
      },
    };
  }
  if (line === 'free' || line === 'no-permission') return { kind: line };
  const failure = /^(failed|undone|undo-failed) (.+)$/.exec(line);
  if (failure?.[1] === 'failed' || failure?.[1] === 'undone' || failure?.[1] === 'undo-failed') return { kind: failure[1], reason: failure[2] ?? '' };
  return undefined;
}

/** Parse `blockdev --getsize64 DEV`: the size in bytes. */
export function parseGetSize64(stdout: string): number {
  const text = stdout.trim();
  if (!/^\d+$/.test(text)) throw new Error(`blockdev --getsize64 printed ${JSON.stringify(text.slice(0, 100))}, not a size`);
  const size = Number(text);
  if (!Number.isSafeInteger(size)) throw new Error(`blockdev --getsize64 printed a size too large to use: ${text}`);
  return size;
}

/** The name under `/sys/block` of a loop device node (`/dev/loop3` → `loop3`). */
export function loopName(device: string): string {
  const match = /^\/dev\/(loop\d+)$/.exec(device);
  if (!match?.[1]) throw new Error(`${device} is not a loop device node`);
  return match[1];
}

/** Arguments of `losetup` that attach `file` to the first free loop device and print it. */
export function findShowArgs(file: string, options: { directIo: boolean; readOnly: boolean }): string[] {
  return [
    '--find',
    '--show',
    ...(options.directIo ? ['--direct-io=on'] : []),
    ...(options.readOnly ? ['--read-only'] : []),
    // `--` keeps a file name that starts with `-` from being read as an option.
    '--',
    file,
  ];
}

/** What kind of failure a losetup/blockdev stderr describes. */
export type LosetupFailure = 'permission' | 'no-free-device' | 'missing-file' | 'not-attached' | 'no-device' | 'other';

/** Classify losetup's stderr (util-linux 2.38 wording, with older variants). */
export function classifyLosetupError(stderr: string): LosetupFailure {
  if (/Permission denied|Operation not permitted/i.test(stderr)) return 'permission';
  if (/(cannot find an unused|could not find any free|no free) loop device/i.test(stderr)) return 'no-free-device';
  if (/loop-control/i.test(stderr)) return 'no-free-device';
  if (/No such device or address/i.test(stderr)) return 'not-attached';
  if (/failed to use device: No such device/i.test(stderr)) return 'no-device';
  if (/No such file or directory/i.test(stderr)) return 'missing-file';
  return 'other';
}
