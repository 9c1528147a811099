import { BerthError, newServerRow } from '@berth/core';
import type { NewServer, Server, ServerRepository } from '@berth/core';
import { violation } from '../repository-context.js';
import type { RepositoryContext } from '../repository-context.js';
import { toServer } from '../row-mappers.js';
import { alreadyExists, notFound } from '../store-errors.js';

/** Servers over Kysely. */
export function createServerRepository(ctx: RepositoryContext): ServerRepository {
  const get = async (id: string): Promise<Server | undefined> => {
    const row = await ctx.db().selectFrom('servers').selectAll().where('id', '=', id).executeTakeFirst();
    return row === undefined ? undefined : toServer(row, ctx.dialect);
  };

  const findByName = async (projectId: string, name: string): Promise<Server | undefined> => {
    const row = await ctx
      .db()
      .selectFrom('servers')
      .selectAll()
      .where('project_id', '=', projectId)
      .where('name', '=', name)
      .executeTakeFirst();
    return row === undefined ? undefined : toServer(row, ctx.dialect);
  };

  const stillAttached = (name: string, id: string, count: number, cause?: unknown): BerthError =>
    new BerthError('CONFLICT', `server ${name} still has ${count === 1 ? 'an attachment' : `${count} attachments`}`, {
      hint: 'detach its volumes first (`berth detach`)',
      details: { id, attachments: count },
      cause,
    });

  const countAttachments = async (id: string): Promise<number> => {
    const row = await ctx
      .db()
      .selectFrom('attachments')
      .select((eb) => eb.fn.countAll().as('count'))
      .where('server_id', '=', id)
      .executeTakeFirstOrThrow();
    return Number(row.count);
  };

  return {
    async create(input: NewServer): Promise<Server> {
      const now = ctx.now();
      const server = newServerRow(input, input.id ?? ctx.newId(), now);
      try {
        await ctx.dialect.guarded(() =>
          ctx
            .db()
            .insertInto('servers')
            .values({
              id: server.id,
              name: server.name,
              project_id: server.projectId,
              host_id: server.hostId,
              // The host itself is stored as NULL (as servers made before migration 0005 are).
              hypervisor: server.hypervisor === undefined || server.hypervisor.type === 'host' ? null : ctx.dialect.encodeJson(server.hypervisor),
              created_at: server.createdAt,
              updated_at: server.updatedAt,
            })
            .execute(),
        );
      } catch (error) {
        const kind = violation(ctx, error);
        if (kind === 'foreign_key') throw notFound('host', server.hostId);
        if (kind !== 'unique') throw error;
        if ((await findByName(server.projectId, server.name)) !== undefined) {
          throw alreadyExists(
            `a server named ${server.name} already exists in project ${server.projectId}`,
            { name: server.name, projectId: server.projectId },
            error,
          );
        }
        throw alreadyExists(`a server with id ${server.id} already exists`, { id: server.id }, error);
      }
      return server;
    },

    get,

    async require(id: string): Promise<Server> {
      const server = await get(id);
      if (server === undefined) throw notFound('server', id);
      return server;
    },

    findByName,

    async list(filter: { projectId?: string; hostId?: string } = {}): Promise<Server[]> {
      let query = ctx.db().selectFrom('servers').selectAll();
      if (filter.projectId !== undefined) query = query.where('project_id', '=', filter.projectId);
      if (filter.hostId !== undefined) query = query.where('host_id', '=', filter.hostId);
      const rows = await query.orderBy('created_at').orderBy('id').execute();
      return rows.map((row) => toServer(row, ctx.dialect));
    },

    async delete(id: string): Promise<void> {
      // One statement: the check and the delete cannot be split by a concurrent attach.
      let deleted: bigint;
      try {
        const result = await ctx.dialect.guarded(() =>
          ctx
            .db()
            .deleteFrom('servers')
            .where('id', '=', id)
            .where((eb) =>
              eb.not(eb.exists(eb.selectFrom('attachments').select('attachments.id').where('attachments.server_id', '=', id))),
            )
            .executeTakeFirst(),
        );
        deleted = result.numDeletedRows;
      } catch (error) {
        if (violation(ctx, error) !== 'foreign_key') throw error;
        const server = await get(id);
        throw stillAttached(server?.name ?? id, id, await countAttachments(id), error);
      }
      if (deleted > 0n) return;
      const server = await get(id);
      if (server === undefined) throw notFound('server', id);
      throw stillAttached(server.name, id, await countAttachments(id));
    },
  };
}
