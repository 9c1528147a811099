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

/** Where the kernel's FUSE control filesystem (`fusectl`) lives. */
export const FUSE_CONNECTIONS_DIR = '/sys/fs/fuse/connections';

/** Whether the FUSE control filesystem (`fusectl`) is mounted on {@link FUSE_CONNECTIONS_DIR} (from /proc/mounts). */
export async function fusectlMounted(fs: Pick<HostFs, 'readFile'>): Promise<boolean> {
  return parseProcMounts(await fs.readFile('/proc/mounts')).some((m) => m.fstype === 'fusectl' && m.target === FUSE_CONNECTIONS_DIR);
}

/**
 * The FUSE connection number of the mount at `mountpoint`: the minor of its device (`st_dev`,
 * major 0), read from /proc/self/mountinfo (field 3, `major:minor`) rather than by `stat` of the
 * mount point, which on a FUSE mount whose daemon hangs would itself wait on that daemon. The
 * last mount there counts (a mount over a dead one shadows it). Undefined when nothing FUSE is
 * mounted there.
 */
export function fuseConnectionIn(mountinfo: string, mountpoint: string): number | undefined {
  let found: number | undefined;
  for (const line of mountinfo.split('\n')) {
    const [left, right] = line.split(' - ');
    const fields = (left ?? '').split(' ');
    const fstype = (right ?? '').split(' ')[0] ?? '';
    if (fields.length < 5 || unescapeField(fields[4] ?? '') !== mountpoint) continue;
    if (fstype !== 'fuse' && !fstype.startsWith('fuse.')) continue;
    const device = /^0:(\d+)$/.exec(fields[2] ?? '');
    if (device) found = Number(device[1]);
  }
  return found;
}

/**
 * Abort the FUSE connection of the mount at `mountpoint` (`echo 1 > <fusectl>/<N>/abort`): every
 * request queued on it and every later one fails at once (a loop device on its file sees EIO),
 * whatever its daemon is doing; the daemon's other mounts are other connections. `fusectl` is
 * mounted on /sys/fs/fuse/connections first when it is not. Resolves with the connection number,
 * or undefined when nothing FUSE is mounted there (nothing done).
 */
export async function abortFuseConnection(deps: { fs: HostFs; runner: CommandRunner }, mountpoint: string, timeoutMs: number): Promise<number | undefined> {
  const connection = fuseConnectionIn(await deps.fs.readFile('/proc/self/mountinfo'), mountpoint);
  if (connection === undefined) return undefined;
  if (!(await fusectlMounted(deps.fs))) await deps.runner.run('mount', ['-t', 'fusectl', 'fusectl', FUSE_CONNECTIONS_DIR], { timeoutMs });
  await deps.fs.writeFile(`${FUSE_CONNECTIONS_DIR}/${connection}/abort`, '1');
  return connection;
}
