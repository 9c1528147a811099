import { createHash } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomically } from '@berth/host';
import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';

const zTargets = lazySchema(() => z.array(z.string().regex(/^[a-z]+$/)).max(1024));

/**
 * The disk targets berth last saw in each libvirt domain, kept in the consumer's data dir so an
 * attach can pick a free `vdX` without a `virsh domblklist` run first (each virsh process costs
 * 30–120 ms on a loaded host). A hint only: libvirt refuses a target that is taken ("target vdX
 * already exists"), and the caller then reads the live list and picks again, so a stale or lost
 * hint costs one extra virsh run, never a wrong disk. Written with `@berth/host`'s
 * `writeFileAtomically` (temp file, fsync, rename).
 */
export class TargetHints {
  constructor(private readonly dir: string) {}

  /** The targets last seen in the domain, or `undefined` when there is no usable hint. */
  async get(key: string): Promise<string[] | undefined> {
    const text = await readFile(this.fileOf(key), 'utf8').catch(() => undefined);
    if (text === undefined) return undefined;
    try {
      const parsed = zTargets.safeParse(JSON.parse(text));
      return parsed.success ? parsed.data : undefined;
    } catch {
      return undefined;
    }
  }

  /** Remember the domain's targets (best effort: a hint that cannot be written is only missing). */
  async set(key: string, targets: readonly string[]): Promise<void> {
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      await writeFileAtomically(this.fileOf(key), JSON.stringify([...new Set(targets)].sort()), 0o600);
    } catch {
      // Only a hint: the next attach reads the live list.
    }
  }

  /** Forget the hint (the domain is gone, or its list could not be read). */
  async clear(key: string): Promise<void> {
    await rm(this.fileOf(key), { force: true }).catch(() => undefined);
  }

  private fileOf(key: string): string {
    return path.join(this.dir, `${createHash('sha256').update(key).digest('hex').slice(0, 32)}.json`);
  }
}
