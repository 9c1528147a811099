import { readFile } from 'node:fs/promises';

/** Undo /proc/mounts' octal escapes (`\040` for a space, `\011` tab, `\012` newline, `\134` backslash). */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/** One line of /proc/mounts. */
export interface MountEntry {
  source: string;
  target: string;
  fstype: string;
}

/** Parse /proc/mounts text. */
export function parseProcMounts(text: string): MountEntry[] {
  return text.split('\n').flatMap((line) => {
    const [source, target, fstype] = line.split(' ');
    return source && target && fstype ? [{ source: unescapeMountField(source), target: unescapeMountField(target), fstype }] : [];
  });
}

/** The mounts whose mount point passes `match`. */
export async function mountsMatching(match: (target: string) => boolean): Promise<MountEntry[]> {
  return parseProcMounts(await readFile('/proc/mounts', 'utf8')).filter((m) => match(m.target));
}

/** True when something is mounted on `target`. */
export async function isMounted(target: string): Promise<boolean> {
  return (await mountsMatching((t) => t === target)).length > 0;
}
