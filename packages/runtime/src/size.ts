import { BerthError } from '@berth/core';

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1000 ** 4,
  tib: 1024 ** 4,
  p: 1024 ** 5,
  pb: 1000 ** 5,
  pib: 1024 ** 5,
};

/**
 * Bytes from a human size: `4096`, `512MiB`, `1GiB`, `10G`, `1PiB` (binary, as `qemu-img` and `truncate`
 * read a bare suffix), `1GB` (decimal). Throws VALIDATION for anything else.
 */
export function parseSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = match ? UNITS[match[2]!.toLowerCase()] : undefined;
  if (!match || unit === undefined) {
    throw new BerthError('VALIDATION', `invalid size ${JSON.stringify(text)}`, {
      hint: 'use a number of bytes or a unit: 512MiB, 1GiB, 10G, 1TB, 1PiB',
    });
  }
  const bytes = Number(match[1]) * unit;
  if (!Number.isSafeInteger(bytes)) {
    throw new BerthError('VALIDATION', `size ${JSON.stringify(text)} is not a whole number of bytes or too large`, {
      hint: 'a volume is at most 1 PiB (1PiB); a fraction must come to whole bytes (1.5GiB, not 1.3B)',
    });
  }
  return bytes;
}

/** A size for humans, in binary units: 1073741824 → `1 GiB`, 1536 → `1.5 KiB`. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(value < 10 ? 2 : 1).replace(/\.?0+$/, '');
  return `${text} ${units[i]}`;
}
