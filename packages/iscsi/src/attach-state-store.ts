import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { z } from '@berth/core/zod';
import { BerthError, lazySchema } from '@berth/core';

/** What a volume id must look like to name a state file (berth's ids are UUIDs). */
export const zStateVolumeId = lazySchema(() => z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/, 'must be letters, digits, ".", "_" or "-" (at most 200)')
  .refine((id) => !id.includes('..'), 'must not contain ".."'));

/**
 * Attach states as one JSON file per volume under `dir` (`<dir>/<volumeId>.json`), each checked
 * against `schema` and written atomically (a temporary file renamed over the old one), so a crash
 * leaves the old state or the new, never half of one. What a state holds is the transport's:
 * the store only keeps files.
 */
export class AttachStateFileStore<S extends { volumeId: string }> {
  constructor(
    readonly dir: string,
    private readonly schema: z.ZodType<S>,
  ) {}

  /** The file of `volumeId` (throws VALIDATION for an id that cannot be a file name). */
  fileOf(volumeId: string): string {
    const id = zStateVolumeId.safeParse(volumeId);
    if (!id.success) {
      throw new BerthError('VALIDATION', `volume id ${JSON.stringify(volumeId)} cannot name an attach-state file: ${id.error.issues[0]?.message ?? 'invalid'}`);
    }
    return path.join(this.dir, `${id.data}.json`);
  }

  /** Write `state` (replacing any earlier state of the volume). */
  async save(state: S): Promise<void> {
    const valid = this.schema.parse(state);
    const file = this.fileOf(valid.volumeId);
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const temp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    const handle = await fsp.open(temp, 'w', 0o600);
    try {
      await handle.writeFile(JSON.stringify(valid, null, 2) + '\n');
      // The rename must not land before the bytes: a crash would leave an empty state file.
      await handle.sync();
    } finally {
      await handle.close();
    }
    try {
      await fsp.rename(temp, file);
    } catch (error) {
      await fsp.rm(temp, { force: true });
      throw error;
    }
  }

  /** The state of `volumeId`; `undefined` when there is none or it cannot be read as a state. */
  async load(volumeId: string): Promise<S | undefined> {
    return this.readState(this.fileOf(volumeId));
  }

  /** Forget `volumeId` (no error when there was nothing). */
  async remove(volumeId: string): Promise<void> {
    // One unlink: `rm` would lstat first and check its options on every detach.
    try {
      await fsp.unlink(this.fileOf(volumeId));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }

  /** Every readable state, in file-name order (temporary and unreadable files are skipped). */
  async list(): Promise<S[]> {
    let entries: string[];
    try {
      entries = await fsp.readdir(this.dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    const states: S[] = [];
    for (const entry of entries.filter((e) => e.endsWith('.json')).sort()) {
      const state = await this.readState(path.join(this.dir, entry));
      if (state !== undefined) states.push(state);
    }
    return states;
  }

  private async readState(file: string): Promise<S | undefined> {
    let text: string;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
    try {
      const parsed = this.schema.safeParse(JSON.parse(text));
      return parsed.success ? parsed.data : undefined;
    } catch {
      return undefined;
    }
  }
}
