import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { BerthError } from '@berth/core';

/** What a volume id must look like to name a state file (berth's ids are UUIDs). */
export const zStateVolumeId = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/, 'must be letters, digits, ".", "_" or "-" (at most 200)')
  .refine((id) => !id.includes('..'), 'must not contain ".."');

/** One path as the attach left it. */
export const zAttachPath = z.object({
  /** The connection's own spelling. */
  target_iqn: z.string(),
  target_portal: z.string(),
  target_lun: z.number().int().nonnegative(),
  kernel_lun: z.number().int().nonnegative(),
  /** `active` (in the device), `failed` (no session or no device), `refused` (another LUN's WWN), `unused` (degraded mode). */
  state: z.enum(['active', 'failed', 'refused', 'unused']),
  sid: z.number().int().nonnegative().optional(),
  hctl: z.string().optional(),
  /** `/dev/sdX`, when the path had a device. */
  device: z.string().optional(),
});

/**
 * What the transport remembers about a connected volume, without any secret (Kubernetes keeps
 * the same in its iscsi.json): enough for a disconnect after a restart, when the caller no longer
 * has the device.
 */
export const zAttachState = z.object({
  version: z.literal(1),
  volumeId: zStateVolumeId,
  /** `multipath`: `device` is a dm map over the paths; `single`: degraded to one `/dev/sdX`. */
  mode: z.enum(['multipath', 'single']),
  /** The device handed out: `/dev/dm-N`, or `/dev/sdX` in single mode. */
  device: z.string(),
  /** `dm-N` and its map name (the wwid unless user_friendly_names), in multipath mode. */
  dm: z.string().optional(),
  mapName: z.string().optional(),
  scsi_wwn: z.string(),
  /** The connection's `target_iqn`/`target_portal`/`target_lun` (or its first listed path): what names the volume. */
  target_iqn: z.string(),
  target_portal: z.string(),
  target_lun: z.number().int().nonnegative(),
  /** Every path the attach tried, with what became of it. */
  paths: z.array(zAttachPath),
  connectedAt: z.string(),
});

/** One volume's persisted attach state. */
export type AttachState = z.output<typeof zAttachState>;

/** One path of a persisted attach state. */
export type AttachPath = z.output<typeof zAttachPath>;

/**
 * Attach states as one JSON file per volume under `dir`
 * (`<dataDir>/driver-iscsi-multipath/attachments/<volumeId>.json`), each written atomically (a
 * temporary file renamed over the old one), so a crash leaves the old state or the new, never half.
 */
export class AttachStateStore {
  constructor(readonly dir: string) {}

  /** The file of `volumeId` (throws VALIDATION for an id that cannot be a file name). */
  fileOf(volumeId: string): string {
    const id = zStateVolumeId.safeParse(volumeId);
    if (!id.success) {
      throw new BerthError('VALIDATION', `volume id ${JSON.stringify(volumeId)} cannot name an attach-state file: ${id.error.issues[0]?.message ?? 'invalid'}`);
    }
    return path.join(this.dir, `${id.data}.json`);
  }

  /** Write `state` (replacing any earlier state of the volume). */
  async save(state: AttachState): Promise<void> {
    const valid = zAttachState.parse(state);
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
  async load(volumeId: string): Promise<AttachState | undefined> {
    return readState(this.fileOf(volumeId));
  }

  /** Forget `volumeId` (no error when there was nothing). */
  async remove(volumeId: string): Promise<void> {
    await fsp.rm(this.fileOf(volumeId), { force: true });
  }

  /** Every readable state, in file-name order (temporary and unreadable files are skipped). */
  async list(): Promise<AttachState[]> {
    let entries: string[];
    try {
      entries = await fsp.readdir(this.dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    const states: AttachState[] = [];
    for (const entry of entries.filter((e) => e.endsWith('.json')).sort()) {
      const state = await readState(path.join(this.dir, entry));
      if (state !== undefined) states.push(state);
    }
    return states;
  }
}

async function readState(file: string): Promise<AttachState | undefined> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const parsed = zAttachState.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}
