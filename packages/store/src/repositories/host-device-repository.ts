import { hostDeviceRow } from '@berth/core';
import type { HostDevice, HostDeviceRepository, NewHostDevice } from '@berth/core';
import type { RepositoryContext } from '../repository-context.js';
import { toHostDevice } from '../row-mappers.js';

/** berth's ledger of connected devices over Kysely: one row per (host, volume), replaced in place. */
export function createHostDeviceRepository(ctx: RepositoryContext): HostDeviceRepository {
  const get = async (hostId: string, volumeId: string): Promise<HostDevice | undefined> => {
    const row = await ctx
      .db()
      .selectFrom('host_devices')
      .selectAll()
      .where('host_id', '=', hostId)
      .where('volume_id', '=', volumeId)
      .executeTakeFirst();
    return row === undefined ? undefined : toHostDevice(row, ctx.dialect);
  };

  return {
    get,

    async list(filter: { hostId?: string; volumeId?: string } = {}): Promise<HostDevice[]> {
      let query = ctx.db().selectFrom('host_devices').selectAll();
      if (filter.hostId !== undefined) query = query.where('host_id', '=', filter.hostId);
      if (filter.volumeId !== undefined) query = query.where('volume_id', '=', filter.volumeId);
      const rows = await query.orderBy('created_at').orderBy('volume_id').execute();
      return rows.map((row) => toHostDevice(row, ctx.dialect));
    },

    async put(input: NewHostDevice): Promise<HostDevice> {
      const now = ctx.now();
      // A replaced record keeps its created_at: the upsert does not set it, and RETURNING gives
      // the row as stored (no read before the write).
      const record = hostDeviceRow(input, now, now);
      const columns = {
        transport: record.transport,
        connection_info: ctx.dialect.encodeJson(record.connectionInfo),
        device: ctx.dialect.encodeJson(record.device),
        operation_id: record.operationId,
        host_root: record.hostRoot ?? null,
        updated_at: record.updatedAt,
      };
      // Insert, or replace the record of this host and volume (one device per volume per host).
      const row = await ctx
        .db()
        .insertInto('host_devices')
        .values({ host_id: record.hostId, volume_id: record.volumeId, created_at: record.createdAt, ...columns })
        .onConflict((oc) => oc.columns(['host_id', 'volume_id']).doUpdateSet(columns))
        .returningAll()
        .executeTakeFirstOrThrow();
      return toHostDevice(row, ctx.dialect);
    },

    async delete(hostId: string, volumeId: string): Promise<void> {
      await ctx.db().deleteFrom('host_devices').where('host_id', '=', hostId).where('volume_id', '=', volumeId).execute();
    },
  };
}
