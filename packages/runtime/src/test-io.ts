import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';

/** Write `data` at `offset` of `file` and fsync. */
export function writeAt(file: string, data: Buffer, offset: number): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
