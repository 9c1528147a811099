import { readdirSync, rmdirSync, rmSync, unlinkSync } from 'node:fs';

/** Run the quick removal `remove`; a missing path is fine, anything unexpected goes the slow way. */
function quickly(realPath: string, remove: (realPath: string) => void): void {
  try {
    remove(realPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return;
    rmSync(realPath, { recursive: true, force: true });
  }
}

/**
 * Remove one file, link or FIFO the kernel model made (`rmSync(p, { force: true })` without its
 * option checks and `lstat`s): a missing one is fine; anything else (a directory) goes the slow way.
 */
export function removeEntry(realPath: string): void {
  quickly(realPath, unlinkSync);
}

/**
 * Remove a sysfs tree the kernel model made (directories, attribute files, FIFOs and links; no
 * mounts), children first, from one `readdir` with types per directory: Node 20's recursive
 * `rmSync` `lstat`s every entry and tries `rmdir` on each directory before reading it (an error
 * thrown and caught per directory), twice the CPU for a disk's ~40 entries. A tree that changes
 * under it (ENOTEMPTY, a directory where a file was) is finished by `rmSync`.
 */
export function removeTree(realPath: string): void {
  quickly(realPath, removeChildrenFirst);
}

function removeChildrenFirst(dir: string): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const child = `${dir}/${entry.name}`;
    if (entry.isDirectory()) removeChildrenFirst(child);
    else removeEntry(child);
  }
  rmdirSync(dir);
}
