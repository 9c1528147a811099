import { assertAttachmentTransition, distinctDevices, lazySchema, newAttachmentRow, parseWith, redactConnectionInfo, zAttachment } from '@berth/core';
import type {
  Attachment,
  AttachmentFilter,
  AttachmentPatch,
  AttachmentRepository,
  AttachmentStatus,
  Device,
  NewAttachment,
} from '@berth/core';
import type { Selectable, Updateable } from 'kysely';
import type { AttachmentsTable } from '../database.js';
import { cachedQuery, cachedQueryFamily, casParams, casShape, type CasParams, type CasShape } from '../cached-query.js';
import { encodeNullableJson, violation } from '../repository-context.js';
import type { RepositoryContext } from '../repository-context.js';
import { toAttachment, toDevice } from '../row-mappers.js';
import { connectorWithoutSecrets } from '../secrets.js';
import { alreadyExists, notFound, stateConflict } from '../store-errors.js';

const zAttachmentPatch = lazySchema(() =>
  zAttachment
  .unwrap()
  .pick({
    transport: true,
    connector: true,
    connectionInfo: true,
    device: true,
    publishedPath: true,
    guestDevice: true,
    serial: true,
    hostRoot: true,
    timings: true,
    error: true,
  })
  .partial(),
);

const selectAttachment = cachedQuery<{ id: string }, Selectable<AttachmentsTable>>(['id'], (db, p) =>
  db.selectFrom('attachments').selectAll().where('id', '=', p.id),
);
// The two lists a detach and an attach read most (a volume's attachments; those on one host).
const selectOfVolume = cachedQuery<{ volumeId: string }, Selectable<AttachmentsTable>>(['volumeId'], (db, p) =>
  db.selectFrom('attachments').selectAll().where('volume_id', '=', p.volumeId).orderBy('created_at').orderBy('id'),
);
const selectOfVolumeOnHost = cachedQuery<{ volumeId: string; hostId: string }, Selectable<AttachmentsTable>>(['volumeId', 'hostId'], (db, p) =>
  db
    .selectFrom('attachments')
    .selectAll()
    .where('volume_id', '=', p.volumeId)
    .where('host_id', '=', p.hostId)
    .orderBy('created_at')
    .orderBy('id'),
);

/** `UPDATE attachments SET <columns> WHERE id = ? [AND status IN (<from>)] RETURNING *`, compiled once per shape. */
const updateAttachment = cachedQueryFamily(casShape.key, (shape: CasShape) =>
  cachedQuery<CasParams, Selectable<AttachmentsTable>>(casShape.names(shape), (db, p) => {
    const set = Object.fromEntries(shape.columns.map((column) => [column, p[column]])) as Updateable<AttachmentsTable>;
    const query = db.updateTable('attachments').set(set).where('id', '=', p['id'] as string);
    const from = Array.from({ length: shape.from }, (_, i) => p[`from${i}`] as AttachmentStatus);
    return (from.length === 0 ? query : query.where('status', 'in', from)).returningAll();
  }),
);

/** Attachments over Kysely. */
export function createAttachmentRepository(ctx: RepositoryContext): AttachmentRepository {
  const get = async (id: string): Promise<Attachment | undefined> => {
    const [row] = (await selectAttachment(ctx.db(), { id })).rows;
    return row === undefined ? undefined : toAttachment(row, ctx.dialect);
  };

  /** The columns a patch changes; secrets are dropped here whatever the caller did. */
  const patchColumns = (patch: AttachmentPatch): Updateable<AttachmentsTable> => {
    const valid = parseWith(zAttachmentPatch, patch, 'attachment change');
    const set: Updateable<AttachmentsTable> = {};
    if (valid.transport !== undefined) set.transport = valid.transport;
    if (valid.connector !== undefined) {
      set.connector = encodeNullableJson(ctx, valid.connector === null ? null : connectorWithoutSecrets(valid.connector));
    }
    if (valid.connectionInfo !== undefined) {
      set.connection_info = encodeNullableJson(
        ctx,
        valid.connectionInfo === null ? null : redactConnectionInfo(valid.connectionInfo),
      );
    }
    if (valid.device !== undefined) set.device = encodeNullableJson(ctx, valid.device);
    if (valid.publishedPath !== undefined) set.published_path = valid.publishedPath;
    if (valid.guestDevice !== undefined) set.guest_device = valid.guestDevice;
    if (valid.serial !== undefined) set.guest_serial = valid.serial;
    if (valid.hostRoot !== undefined) set.host_root = valid.hostRoot;
    if (valid.timings !== undefined) set.timings = ctx.dialect.encodeJson(valid.timings);
    if (valid.error !== undefined) set.error = valid.error;
    return set;
  };

  const casFailure = async (id: string, from: readonly AttachmentStatus[]): Promise<Error> => {
    const current = await get(id);
    if (current === undefined) return notFound('attachment', id);
    return stateConflict('attachment', id, id, current.status, from);
  };

  /** Which referenced row is missing after a foreign-key violation. */
  const missingReference = async (input: { volumeId: string; serverId: string; hostId: string }): Promise<Error | undefined> => {
    const db = ctx.db();
    if ((await db.selectFrom('volumes').select('id').where('id', '=', input.volumeId).executeTakeFirst()) === undefined) {
      return notFound('volume', input.volumeId);
    }
    if ((await db.selectFrom('servers').select('id').where('id', '=', input.serverId).executeTakeFirst()) === undefined) {
      return notFound('server', input.serverId);
    }
    if ((await db.selectFrom('hosts').select('id').where('id', '=', input.hostId).executeTakeFirst()) === undefined) {
      return notFound('host', input.hostId);
    }
    return undefined;
  };

  return {
    async create(input: NewAttachment): Promise<Attachment> {
      const attachment = newAttachmentRow(input, input.id ?? ctx.newId(), ctx.now());
      try {
        await ctx.dialect.guarded(() =>
          ctx
            .db()
            .insertInto('attachments')
            .values({
              id: attachment.id,
              volume_id: attachment.volumeId,
              server_id: attachment.serverId,
              host_id: attachment.hostId,
              status: attachment.status,
              mode: attachment.mode,
              transport: attachment.transport,
              connector: encodeNullableJson(ctx, attachment.connector),
              connection_info: null,
              device: null,
              published_path: null,
              guest_device: null,
              guest_serial: null,
              host_root: null,
              timings: ctx.dialect.encodeJson(attachment.timings),
              error: null,
              created_at: attachment.createdAt,
              updated_at: attachment.updatedAt,
            })
            .execute(),
        );
      } catch (error) {
        const kind = violation(ctx, error);
        if (kind === 'foreign_key') throw (await missingReference(attachment)) ?? error;
        if (kind === 'unique') throw alreadyExists(`an attachment with id ${attachment.id} already exists`, { id: attachment.id }, error);
        throw error;
      }
      return attachment;
    },

    get,

    async require(id: string): Promise<Attachment> {
      const attachment = await get(id);
      if (attachment === undefined) throw notFound('attachment', id);
      return attachment;
    },

    async list(filter: AttachmentFilter = {}): Promise<Attachment[]> {
      const { volumeId, hostId, ...rest } = filter;
      if (volumeId !== undefined && Object.values(rest).every((value) => value === undefined)) {
        const { rows } = hostId === undefined ? await selectOfVolume(ctx.db(), { volumeId }) : await selectOfVolumeOnHost(ctx.db(), { volumeId, hostId });
        return rows.map((row) => toAttachment(row, ctx.dialect));
      }
      let query = ctx.db().selectFrom('attachments').selectAll();
      if (filter.volumeId !== undefined) query = query.where('volume_id', '=', filter.volumeId);
      if (filter.serverId !== undefined) query = query.where('server_id', '=', filter.serverId);
      if (filter.hostId !== undefined) query = query.where('host_id', '=', filter.hostId);
      if (filter.status !== undefined) {
        const statuses: readonly AttachmentStatus[] = typeof filter.status === 'string' ? [filter.status] : filter.status;
        if (statuses.length === 0) return [];
        query = query.where('status', 'in', statuses);
      }
      if (filter.projectId !== undefined) {
        const projectId = filter.projectId;
        query = query.where('volume_id', 'in', (eb) =>
          eb.selectFrom('volumes').select('volumes.id').where('volumes.project_id', '=', projectId),
        );
      }
      const rows = await query.orderBy('created_at').orderBy('id').execute();
      return rows.map((row) => toAttachment(row, ctx.dialect));
    },

    async transition(
      id: string,
      from: readonly AttachmentStatus[],
      to: AttachmentStatus,
      patch: AttachmentPatch = {},
    ): Promise<Attachment> {
      assertAttachmentTransition(from, to);
      const set = patchColumns(patch);
      if (from.length === 0) throw await casFailure(id, from);
      const columns = { ...set, status: to, updated_at: ctx.now() };
      const [row] = (await updateAttachment({ columns: Object.keys(columns), from: from.length })(ctx.db(), casParams(columns, id, from))).rows;
      if (row === undefined) throw await casFailure(id, from);
      return toAttachment(row, ctx.dialect);
    },

    async update(id: string, patch: AttachmentPatch): Promise<Attachment> {
      const set = patchColumns(patch);
      const columns = { ...set, updated_at: ctx.now() };
      const [row] = (await updateAttachment({ columns: Object.keys(columns), from: 0 })(ctx.db(), casParams(columns, id, []))).rows;
      if (row === undefined) throw notFound('attachment', id);
      return toAttachment(row, ctx.dialect);
    },

    async delete(id: string): Promise<void> {
      await ctx.db().deleteFrom('attachments').where('id', '=', id).execute();
    },

    async devicesOfOtherVolumes(hostId: string, volumeId: string): Promise<Device[]> {
      const db = ctx.db();
      const rows = await db
        .selectFrom('attachments')
        .select('device')
        .where('host_id', '=', hostId)
        .where('volume_id', '!=', volumeId)
        .where('status', '!=', 'detached')
        .where('device', 'is not', null)
        .unionAll(db.selectFrom('host_devices').select('device').where('host_id', '=', hostId).where('volume_id', '!=', volumeId))
        .execute();
      // Repeats go before the check: an attachment's device and its record are mostly one device.
      const devices = distinctDevices(rows.map((row) => ctx.dialect.decodeJson(row.device)));
      return devices.map((device) => toDevice(device, hostId));
    },
  };
}
