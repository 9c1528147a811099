import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// Helpers for tests that change berth's state behind its back and read the machine's state.

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** A child berth that runs one attach or detach and may be killed at an armed fault point (`op-child.mjs`). */
export const OP_CHILD = path.join(HERE, 'op-child.mjs');
/** Another process holding berth's SQLite write lock (`lock-holder.mjs`). */
export const LOCK_HOLDER = path.join(HERE, 'lock-holder.mjs');

/** Run one SQL statement on a data dir's database with the sqlite3 tool (a write berth did not make). */
export function sqlite(dataDir: string, statement: string): string {
  return execFileSync('sqlite3', ['-cmd', '.timeout 5000', path.join(dataDir, 'berth.db'), statement], { encoding: 'utf8' }).trim();
}

// What each hand-made loop device was made over: it is detached only while it still backs that
// file, since reconcile (the code under test) may detach it first and another test on the machine
// may then get the same number.
const madeByHand = new Map<string, string>();

/** Attach `file` (from `offset`) to a free loop device by hand, as an operator might; the device. */
export function losetupByHand(file: string, offset?: number): string {
  const args = ['--find', '--show', ...(offset === undefined ? [] : ['--offset', String(offset)]), file];
  const device = execFileSync('losetup', args, { encoding: 'utf8' }).trim();
  madeByHand.set(device, file);
  return device;
}

/**
 * Detach a loop device by hand; an already detached one is fine. One made with `losetupByHand` is
 * detached only while it still backs its file: a number reused since belongs to someone else.
 */
export function detachByHand(device: string): void {
  const file = madeByHand.get(device);
  madeByHand.delete(device);
  try {
    if (file !== undefined) {
      const backing = execFileSync('losetup', ['--noheadings', '--output', 'BACK-FILE', device], { encoding: 'utf8' }).trim();
      if (backing !== file) return;
    }
    execFileSync('losetup', ['--detach', device], { stdio: 'ignore' });
  } catch {
    // already gone
  }
}

/**
 * Run one berth operation in a child process that SIGKILLs itself at the fault point `point`
 * (`BERTH_FAULTS=<point>=crash`): 'killed' when it did, else what the child printed.
 */
export function crashChild(
  dataDir: string,
  command: 'attach' | 'detach' | 'create' | 'delete' | 'extend',
  point: string,
  options: { volume?: string; args?: string[]; env?: Record<string, string>; timeoutMs?: number } = {},
): string {
  const result = spawnSync(process.execPath, [OP_CHILD, dataDir, command, options.volume ?? 'v', ...(options.args ?? [])], {
    env: { ...process.env, ...options.env, BERTH_FAULTS: `${point}=crash`, BERTH_LOG_LEVEL: 'silent' },
    encoding: 'utf8',
    timeout: options.timeoutMs ?? 60_000,
  });
  return result.signal === 'SIGKILL' ? 'killed' : result.stdout.trim() || result.stderr.trim();
}

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

/** `length` bytes at `offset` of a file or block device. */
export function readAt(file: string, length: number, offset: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const buffer = Buffer.alloc(length);
    readSync(fd, buffer, 0, length, offset);
    return buffer;
  } finally {
    closeSync(fd);
  }
}
