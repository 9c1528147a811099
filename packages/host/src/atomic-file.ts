import { randomBytes } from 'node:crypto';
import { link, open, rename, rm } from 'node:fs/promises';
import path from 'node:path';

/**
 * Write `text` to `file` atomically: a temp file beside it with `mode`, synced, then renamed over
 * it, so a reader sees the old content or the new, never half of it (a pid file, a secret file).
 */
export async function writeFileAtomically(file: string, text: string, mode = 0o644): Promise<void> {
  const temp = await writeTemp(file, text, mode, true);
  try {
    await rename(temp, file);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

/**
 * Create `file` holding `text` unless it exists — whole from its first moment: a temp file beside
 * it with `mode` (synced when `sync`) linked to its name, which fails when another process made it
 * first. True when this call made it, false when it was there. A file made by an exclusive open()
 * and written after can be read empty meanwhile (a lock file; a name two processes both make).
 */
export async function createFileWhole(file: string, text: string, options: { mode?: number; sync?: boolean } = {}): Promise<boolean> {
  const temp = await writeTemp(file, text, options.mode ?? 0o644, options.sync === true);
  try {
    await link(temp, file);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  } finally {
    await rm(temp, { force: true });
  }
}

/** A new temp file beside `file` holding `text` (its path). */
async function writeTemp(file: string, text: string, mode: number, sync: boolean): Promise<string> {
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const handle = await open(temp, 'wx', mode);
  try {
    await handle.writeFile(text, 'utf8');
    if (sync) await handle.sync();
  } catch (error) {
    await handle.close();
    await rm(temp, { force: true });
    throw error;
  }
  await handle.close();
  return temp;
}
