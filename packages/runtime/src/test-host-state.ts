import { execFileSync } from 'node:child_process';
import path from 'node:path';

// Helpers for tests that change berth's state behind its back and read the machine's state.

/** Run one SQL statement on a data dir's database with the sqlite3 tool (a write berth did not make). */
export function sqlite(dataDir: string, statement: string): string {
  return execFileSync('sqlite3', ['-cmd', '.timeout 5000', path.join(dataDir, 'berth.db'), statement], { encoding: 'utf8' }).trim();
}

/** Every loop device on the machine with its backing file. */
export function loopList(): Array<{ name: string; backFile: string }> {
  const out = execFileSync('losetup', ['--json', '--list'], { encoding: 'utf8' }).trim();
  if (!out) return [];
  const parsed = JSON.parse(out) as { loopdevices: Array<{ name: string; 'back-file'?: string | null }> };
  return parsed.loopdevices.map((d) => ({ name: d.name, backFile: (d['back-file'] ?? '').replace(/ \(deleted\)$/, '') }));
}

/** Loop devices backing `file`. */
export function loopsBacking(file: string): string[] {
  return loopList()
    .filter((d) => d.backFile === file)
    .map((d) => d.name);
}

/** Attach `file` to a loop device by hand (as an operator would), returning the device. */
export function losetupByHand(file: string): string {
  return execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
}

/** Detach a loop device by hand; an already detached one is fine. */
export function detachByHand(device: string): void {
  try {
    execFileSync('losetup', ['--detach', device], { stdio: 'ignore' });
  } catch {
    // already gone
  }
}
