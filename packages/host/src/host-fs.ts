import { randomBytes } from 'node:crypto';
import {
  closeSync,
  constants as fsConstants,
  lstatSync,
  mkdirSync,
  openSync,
  promises as fsp,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';
import type { HostFs, HostStat } from './types.js';
import { isMissing } from './errors.js';

// Linux gives up after 40 links (MAXSYMLINKS); so does the rooted resolver.
const MAX_SYMLINKS = 40;

function errnoError(code: string, message: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}

/**
 * The segments of an absolute host path, with `.` and `..` applied; throws when it is relative
 * or when a `..` climbs above `/` (which would escape the root).
 */
export function hostPathSegments(hostPath: string): string[] {
  if (!path.posix.isAbsolute(hostPath)) throw new Error(`not an absolute host path: ${JSON.stringify(hostPath)}`);
  const segments: string[] = [];
  for (const part of hostPath.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (segments.length === 0) throw new Error(`host path escapes the root: ${JSON.stringify(hostPath)}`);
      segments.pop();
    } else {
      segments.push(part);
    }
  }
  return segments;
}

/** The filesystem seen from `root` (`/` in production, a simulated host's directory in tests). */
export function createHostFs(root = '/'): HostFs {
  const realRoot = path.resolve(root);
  const atSlash = realRoot === path.sep;

  function resolve(hostPath: string): string {
    const segments = hostPathSegments(hostPath);
    if (atSlash) return '/' + segments.join('/');
    return segments.length === 0 ? realRoot : path.join(realRoot, ...segments);
  }

  function toHostPath(realPath: string): string {
    const normal = path.resolve(realPath);
    if (atSlash) return normal;
    if (normal === realRoot) return '/';
    if (!normal.startsWith(realRoot + path.sep)) throw new Error(`${realPath} is not under the host root ${realRoot}`);
    return normal.slice(realRoot.length);
  }

  /**
   * Resolve symlinks one by one, reading each under the root: absolute targets are host paths
   * (`/dev/sdb`), relative ones are relative to the link's directory (`../../sdb`, as udev makes
   * them), and `..` stops at the root as it does in a chroot. The host path, or `ENOENT`/`ENOTDIR`
   * (`missing`: the first component that is not there) or `ELOOP`.
   *
   * Each step is a synchronous `lstat` (and `readlink` for a link): under a host root they read
   * the metadata of sysfs, devtmpfs, tmpfs or the page cache (~4 µs each on the 2-core machine),
   * where a promise through libuv's pool costs ~30 µs of CPU — and a sysfs path is a dozen steps
   * (32 concurrent iSCSI detaches on the simulated host made ~2,000). Nothing is kept between
   * calls: the tree changes under berth.
   */
  function resolveUnderRoot(hostPath: string): { path: string } | { missing: 'ENOENT' | 'ENOTDIR' | 'ELOOP'; at: string } {
    // `done` holds the resolved host segments and `reals[i]` the real path of the first i + 1 of
    // them, so each step is one string concatenation, not a re-parse and re-join of the whole
    // path; `todo` is a stack (next segment last), so a step does not copy the rest of the path.
    const base = atSlash ? '' : realRoot;
    const done: string[] = [];
    const reals: string[] = [];
    const todo = hostPathSegments(hostPath).reverse();
    const hostOf = (part: string): string => '/' + [...done, part].join('/');
    let links = 0;
    while (todo.length > 0) {
      const part = todo.pop() as string;
      if (part === '.') continue;
      if (part === '..') {
        done.pop();
        reals.pop();
        continue;
      }
      const real = `${reals[reals.length - 1] ?? base}/${part}`;
      let st;
      try {
        st = lstatSync(real, { throwIfNoEntry: false });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOTDIR') return { missing: 'ENOTDIR', at: hostOf(part) };
        throw error;
      }
      if (st === undefined) return { missing: 'ENOENT', at: hostOf(part) };
      if (!st.isSymbolicLink()) {
        if (todo.length > 0 && !st.isDirectory()) return { missing: 'ENOTDIR', at: hostOf(part) };
        done.push(part);
        reals.push(real);
        continue;
      }
      if (++links > MAX_SYMLINKS) return { missing: 'ELOOP', at: `too many symbolic links resolving ${hostPath}` };
      let target: string;
      try {
        target = readlinkSync(real);
      } catch (error) {
        // The link went, or became something else, between its lstat and its readlink: the kernel
        // deletes a disk (`/sys/block/sdX`) whenever it likes. Look at this component again.
        const code = (error as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && code !== 'EINVAL' && code !== 'ENOTDIR') throw error;
        todo.push(part);
        continue;
      }
      if (target.startsWith('/')) {
        done.length = 0;
        reals.length = 0;
      }
      const parts = target.split('/');
      for (let i = parts.length - 1; i >= 0; i--) if (parts[i] !== '') todo.push(parts[i] as string);
    }
    return { path: '/' + done.join('/') };
  }

  function realpathUnderRoot(hostPath: string): string {
    const resolved = resolveUnderRoot(hostPath);
    if ('missing' in resolved) throw errnoError(resolved.missing, resolved.at);
    return resolved.path;
  }

  async function exists(hostPath: string): Promise<boolean> {
    // Like `test -e`: a link counts when what it points at exists, read under the root.
    if (!atSlash) return 'path' in resolveUnderRoot(hostPath);
    try {
      await fsp.stat(resolve(hostPath));
      return true;
    } catch (error) {
      if (isMissing(error) || (error as NodeJS.ErrnoException).code === 'ELOOP') return false;
      throw error;
    }
  }

  return {
    root: realRoot,
    resolve,
    toHostPath,

    async readFile(hostPath) {
      return fsp.readFile(resolve(hostPath), 'utf8');
    },

    async readFileIfExists(hostPath) {
      try {
        return await fsp.readFile(resolve(hostPath), 'utf8');
      } catch (error) {
        if (isMissing(error)) return undefined;
        throw error;
      }
    },

    async writeFile(hostPath, data, options = {}) {
      // No parent directories are made: a sysfs attribute (`.../host3/scan`) must already exist,
      // and writing to a host that is gone has to fail, as it does in the kernel.
      const real = resolve(hostPath);
      // A metadata read (sysfs, tmpfs, the page cache): synchronous, as in the rooted walk.
      const stat = (() => {
        try {
          return statSync(real, { throwIfNoEntry: false });
        } catch {
          return undefined;
        }
      })();
      if (stat?.isFIFO()) {
        // A write-only attribute that something reacts to (the simulated kernel's `scan` and
        // `delete`): like a sysfs write it must return at once, and fail when nobody listens
        // (ENXIO) instead of blocking the caller forever. Opened non-blocking, a pipe write of a
        // few bytes never waits, so it is done synchronously: three system calls, not three
        // round trips through libuv's pool.
        const fd = openSync(real, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
        try {
          writeSync(fd, data);
        } finally {
          closeSync(fd);
        }
        return;
      }
      await fsp.writeFile(real, data, options.mode === undefined ? {} : { mode: options.mode });
    },

    exists,

    async readdir(hostPath) {
      try {
        return await fsp.readdir(resolve(hostPath));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
        throw error;
      }
    },

    // readlink, symlink, unlink and mkdir change or read names, not data: the metadata of devtmpfs
    // (`/dev/berth`), tmpfs or the page cache, as in the rooted walk. Synchronous, they cost a few
    // microseconds each; through libuv's pool each was a round trip of 40–370 µs, and a publish
    // (a directory and two links, each made beside its place and renamed over it) made seven.
    async readlink(hostPath) {
      try {
        return readlinkSync(resolve(hostPath));
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === 'EINVAL' || isMissing(error)) return undefined;
        throw error;
      }
    },

    async symlink(target, linkHostPath) {
      const link = resolve(linkHostPath);
      mkdirSync(path.dirname(link), { recursive: true });
      await dropDeadTemps(link);
      // Make the new link beside the old one and rename it over: readers see the old or the new
      // link, never no link.
      const temp = `${link}.berth-${process.pid}-${randomBytes(4).toString('hex')}`;
      symlinkSync(target, temp);
      try {
        renameSync(temp, link);
      } catch (error) {
        rmSync(temp, { force: true });
        throw error;
      }
    },

    async unlink(hostPath) {
      await dropDeadTemps(resolve(hostPath));
      try {
        unlinkSync(resolve(hostPath));
      } catch (error) {
        if (!isMissing(error)) throw error;
      }
    },

    async mkdir(hostPath, options = {}) {
      mkdirSync(resolve(hostPath), { recursive: true, ...(options.mode === undefined ? {} : { mode: options.mode }) });
    },

    async rm(hostPath) {
      if (hostPathSegments(hostPath).length === 0) throw new Error('refusing to remove the host root');
      await fsp.rm(resolve(hostPath), { recursive: true, force: true });
    },

    async stat(hostPath): Promise<HostStat | undefined> {
      try {
        const st = await fsp.lstat(resolve(hostPath));
        return {
          isFile: st.isFile(),
          isDirectory: st.isDirectory(),
          isSymbolicLink: st.isSymbolicLink(),
          isBlockDevice: st.isBlockDevice(),
          size: st.size,
        };
      } catch (error) {
        if (isMissing(error)) return undefined;
        throw error;
      }
    },

    async realpath(hostPath) {
      if (atSlash) return fsp.realpath(resolve(hostPath));
      return realpathUnderRoot(hostPath);
    },
  };
}

/** `<link>.berth-<pid>-<8 hex>`: the temporary link `symlink` renames over `<link>`. */
const TEMP_LINK = /^(.+)\.berth-(\d+)-[0-9a-f]{8}$/;

/**
 * Remove the temporary links of `link` that a process killed between making one and renaming it
 * (a SIGKILL mid-publish) left beside it. Only those whose process is gone: a live process's
 * temporary link is in use (a reused pid keeps its link: cautious, not wrong).
 */
async function dropDeadTemps(link: string): Promise<void> {
  let names: string[];
  try {
    // Every unlink and symlink reads the link's directory (berth's `/dev` links: one per
    // attachment): synchronous, a metadata read of devtmpfs or tmpfs, as in the rooted walk.
    names = readdirSync(path.dirname(link));
  } catch {
    return;
  }
  const base = path.basename(link);
  const prefix = `${base}.berth-`;
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const match = TEMP_LINK.exec(name);
    if (!match || match[1] !== base || Number(match[2]) === process.pid || processAlive(Number(match[2]))) continue;
    await fsp.rm(path.join(path.dirname(link), name), { force: true });
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, owned by someone else.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

