import type { CommandRunner, HostFs } from '@berth/host';

/** One line of /proc/mounts. */
export interface MountEntry {
  source: string;
  target: string;
  fstype: string;
}

/** Undo /proc/mounts' octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash). */
function unescapeField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/** Parse /proc/mounts text. */
export function parseProcMounts(text: string): MountEntry[] {
  return text.split('\n').flatMap((line) => {
    const [source, target, fstype] = line.split(' ');
    return source && target && fstype ? [{ source: unescapeField(source), target: unescapeField(target), fstype }] : [];
  });
}

/** The FUSE mounts whose mount point is `dir` or lies under it. */
export async function fuseMountsUnder(fs: HostFs, dir: string): Promise<MountEntry[]> {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  return parseProcMounts(await fs.readFile('/proc/mounts')).filter(
    (m) => (m.fstype === 'fuse' || m.fstype.startsWith('fuse.')) && (m.target === dir || m.target.startsWith(prefix)),
  );
}

/**
 * Unmount the FUSE mounts under `dir` lazily (`umount -l`): what a killed qemu-storage-daemon
 * leaves behind ("Transport endpoint is not connected"). Lazy, because a loop device may still
 * hold a file there; the mount is gone from the tree at once and freed at the last close.
 * Resolves with the mount points it unmounted.
 */
export async function unmountFuseUnder(deps: { fs: HostFs; runner: CommandRunner }, dir: string, timeoutMs: number): Promise<string[]> {
  const done: string[] = [];
  // A stacked mount (a daemon restarted over a dead one) shows twice: unmount until none is left.
  for (let round = 0; round < 8; round += 1) {
    const mounts = await fuseMountsUnder(deps.fs, dir);
    if (mounts.length === 0) break;
    for (const mount of mounts) {
      await deps.runner.run('umount', ['-l', '--', mount.target], { timeoutMs, reject: false });
      done.push(mount.target);
    }
  }
  return done;
}
