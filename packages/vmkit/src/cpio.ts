/** One entry of an initramfs: a directory, a regular file or a symlink. */
export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Buffer | string; mode?: number }
  | { kind: 'symlink'; path: string; target: string };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const TRAILER = 'TRAILER!!!';

function hex8(value: number): string {
  return value.toString(16).padStart(8, '0');
}

function pad4(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

function record(ino: number, mode: number, name: string, data: Buffer, nlink: number): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`, 'utf8');
  // newc: magic, then 13 fields of 8 hex digits; header + name, and data, each padded to 4 bytes.
  const fields = [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, 0, 0, nameBytes.length, 0];
  const header = Buffer.from(`070701${fields.map(hex8).join('')}`, 'ascii');
  return [header, nameBytes, pad4(header.length + nameBytes.length), data, pad4(data.length)];
}

/**
 * A `newc` cpio archive (what the kernel unpacks as an initramfs), built in memory: no `cpio`
 * tool, no files to stage. Paths are relative to the archive root (`bin/busybox`, `init`).
 */
export function buildCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const entry of entries) {
    const name = entry.path.replace(/^\/+/, '');
    if (name.length === 0) throw new Error('a cpio entry needs a path below the root');
    if (entry.kind === 'dir') {
      parts.push(...record(ino++, S_IFDIR | (entry.mode ?? 0o755), name, Buffer.alloc(0), 2));
    } else if (entry.kind === 'file') {
      const data = typeof entry.data === 'string' ? Buffer.from(entry.data, 'utf8') : entry.data;
      parts.push(...record(ino++, S_IFREG | (entry.mode ?? 0o644), name, data, 1));
    } else {
      parts.push(...record(ino++, S_IFLNK | 0o777, name, Buffer.from(entry.target, 'utf8'), 1));
    }
  }
  parts.push(...record(0, 0, TRAILER, Buffer.alloc(0), 1));
  return Buffer.concat(parts);
}
