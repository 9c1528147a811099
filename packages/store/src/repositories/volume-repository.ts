import { BerthError, assertVolumeTransition, lazySchema, parseWith, zVolume } from '@berth/core';
import type { NewVolume, Volume, VolumeFilter, VolumeRepository, VolumeStatus } from '@berth/core';
import type { Selectable, Updateable } from 'kysely';
import type { VolumesTable } from '../database.js';
import { cachedQuery, cachedQueryFamily, casParams, casShape, type CasParams, type CasShape } from '../cached-query.js';
import { violation } from '../repository-context.js';
import type { RepositoryContext } from '../repository-context.js';
import { toVolume } from '../row-mappers.js';
import { alreadyExists, notFound, stateConflict } from '../store-errors.js';

const zVolumePatch = lazySchema(() => zVolume.unwrap().pick({ sizeBytes: true, providerLocation: true }).partial());

const selectVolume = cachedQuery<{ id: string }, Selectable<VolumesTable>>(['id'], (db, p) =>
  db.selectFrom('volumes').selectAll().where('id', '=', p.id),
);

/** `UPDATE volumes SET <columns> WHERE id = ? AND status IN (<from>) RETURNING *`, compiled once per shape. */
const transitionVolume = cachedQueryFamily(casShape.key, (shape: CasShape) =>
  cachedQuery<CasParams, Selectable<VolumesTable>>(casShape.names(shape), (db, p) =>
    db
      .updateTable('volumes')
      .set(Object.fromEntries(shape.columns.map((column) => [column, p[column]])) as Updateable<VolumesTable>)
      .where('id', '=', p['id'] as string)
      .where('status', 'in', Array.from({ length: shape.from }, (_, i) => p[`from${i}`] as VolumeStatus))
      .returningAll(),
  ),
);

/** Volumes over Kysely. */
export function createVolumeRepository(ctx: RepositoryContext): VolumeRepository {
  const get = async (id: string): Promise<Volume | undefined> => {
    const [row] = (await selectVolume(ctx.db(), { id })).rows;
    return row === undefined ? undefined : toVolume(row, ctx.dialect);
  };

  const findByName = async (projectId: string, name: string): Promise<Volume | undefined> => {
    const row = await ctx
      .db()
      .selectFrom('volumes')
      .selectAll()
      .where('project_id', '=', projectId)
      .where('name', '=', name)
      .executeTakeFirst();
    return row === undefined ? undefined : toVolume(row, ctx.dialect);
  };

  /** Why a CAS on `id` matched no row. */
  const casFailure = async (id: string, from: readonly VolumeStatus[]): Promise<Error> => {
    const current = await get(id);
    if (current === undefined) return notFound('volume', id);
    return stateConflict('volume', current.name, id, current.status, from);
  };

  return {
    async create(input: NewVolume): Promise<Volume> {
      const now = ctx.now();
      const volume = parseWith(
        zVolume,
        {
          id: input.id ?? ctx.newId(),
          name: input.name,
          projectId: input.projectId,
          sizeBytes: input.sizeBytes,
          status: input.status,
          backend: input.backend,
          multiattach: input.multiattach,
          providerLocation: null,
          createdAt: now,
          updatedAt: now,
        },
        'volume',
      );
      try {
        await ctx.dialect.guarded(() =>
          ctx
            .db()
            .insertInto('volumes')
            .values({
              id: volume.id,
              name: volume.name,
              project_id: volume.projectId,
              size_bytes: volume.sizeBytes,
              status: volume.status,
              backend: volume.backend,
              multiattach: ctx.dialect.encodeBoolean(volume.multiattach),
              provider_location: volume.providerLocation,
              created_at: volume.createdAt,
              updated_at: volume.updatedAt,
            })
            .execute(),
        );
      } catch (error) {
        if (violation(ctx, error) !== 'unique') throw error;
        if ((await findByName(volume.projectId, volume.name)) !== undefined) {
          throw alreadyExists(
            `a volume named ${volume.name} already exists in project ${volume.projectId}`,
            { name: volume.name, projectId: volume.projectId },
            error,
          );
        }
        throw alreadyExists(`a volume with id ${volume.id} already exists`, { id: volume.id }, error);
      }
      return volume;
    },

    get,

    async require(id: string): Promise<Volume> {
      const volume = await get(id);
      if (volume === undefined) throw notFound('volume', id);
      return volume;
    },

    findByName,

    async list(filter: VolumeFilter = {}): Promise<Volume[]> {
      let query = ctx.db().selectFrom('volumes').selectAll();
      if (filter.projectId !== undefined) query = query.where('project_id', '=', filter.projectId);
      if (filter.status !== undefined) query = query.where('status', '=', filter.status);
      const rows = await query.orderBy('created_at').orderBy('id').execute();
      return rows.map((row) => toVolume(row, ctx.dialect));
    },

    async transition(
      id: string,
      from: readonly VolumeStatus[],
      to: VolumeStatus,
      patch: Partial<Pick<Volume, 'sizeBytes' | 'providerLocation'>> = {},
    ): Promise<Volume> {
      assertVolumeTransition(from, to);
      const valid = parseWith(zVolumePatch, patch, 'volume change');
      if (from.length === 0) throw await casFailure(id, from);
      const set: Updateable<VolumesTable> = { status: to, updated_at: ctx.now() };
      if (valid.sizeBytes !== undefined) set.size_bytes = valid.sizeBytes;
      if (valid.providerLocation !== undefined) set.provider_location = valid.providerLocation;
      const [row] = (await transitionVolume({ columns: Object.keys(set), from: from.length })(ctx.db(), casParams(set, id, from))).rows;
      if (row === undefined) throw await casFailure(id, from);
      return toVolume(row, ctx.dialect);
    },

    async delete(id: string, from: readonly VolumeStatus[]): Promise<void> {
      if (from.length === 0) throw await casFailure(id, from);
      let deleted: bigint;
      try {
        const result = await ctx.dialect.guarded(() =>
          ctx
            .db()
            .deleteFrom('volumes')
            .where('id', '=', id)
            .where('status', 'in', from)
            .executeTakeFirst(),
        );
        deleted = result.numDeletedRows;
      } catch (error) {
        if (violation(ctx, error) !== 'foreign_key') throw error;
        const volume = await get(id);
        throw new BerthError('CONFLICT', `volume ${volume?.name ?? id} still has attachments`, {
          hint: 'detach it from every server first (`berth detach`)',
          details: { id },
          cause: error,
        });
      }
      if (deleted === 0n) throw await casFailure(id, from);
    },
  };
}
