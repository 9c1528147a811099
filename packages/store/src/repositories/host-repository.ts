import { lazySchema, parseWith, zConnector, zHost, zHostAgent } from '@berth/core';
import type { Connector, Host, HostRepository, NewHost, NewHostAgent } from '@berth/core';
import { z } from '@berth/core/zod';
import type { Selectable } from 'kysely';
import { cachedQuery } from '../cached-query.js';
import type { HostsTable } from '../database.js';
import { encodeNullableJson, violation } from '../repository-context.js';
import type { RepositoryContext } from '../repository-context.js';
import { toHost } from '../row-mappers.js';
import { connectorWithoutSecrets } from '../secrets.js';
import { agentReplaced, alreadyExists, hostInUse, notFound } from '../store-errors.js';

const zNewHostAgent = lazySchema(() => zHostAgent.unwrap().omit({ lastSeenAt: true }));
const zInstance = z.string().min(1);

const selectHost = cachedQuery<{ id: string }, Selectable<HostsTable>>(['id'], (db, p) => db.selectFrom('hosts').selectAll().where('id', '=', p.id));

/** Hosts over Kysely. */
export function createHostRepository(ctx: RepositoryContext): HostRepository {
  const get = async (id: string): Promise<Host | undefined> => {
    const [row] = (await selectHost(ctx.db(), { id })).rows;
    return row === undefined ? undefined : toHost(row, ctx.dialect);
  };

  const findByName = async (name: string): Promise<Host | undefined> => {
    const row = await ctx.db().selectFrom('hosts').selectAll().where('name', '=', name).executeTakeFirst();
    return row === undefined ? undefined : toHost(row, ctx.dialect);
  };

  return {
    async create(input: NewHost): Promise<Host> {
      const now = ctx.now();
      const host = parseWith(
        zHost,
        {
          id: input.id ?? ctx.newId(),
          name: input.name,
          connector: input.connector == null ? null : connectorWithoutSecrets(input.connector),
          agent: null,
          createdAt: now,
          updatedAt: now,
        },
        'host',
      );
      try {
        await ctx.dialect.guarded(() =>
          ctx
            .db()
            .insertInto('hosts')
            .values({
              id: host.id,
              name: host.name,
              connector: encodeNullableJson(ctx, host.connector),
              agent_instance: null,
              agent_version: null,
              agent_transports: null,
              agent_transport_info: null,
              agent_consumers: null,
              agent_seen_at: null,
              created_at: host.createdAt,
              updated_at: host.updatedAt,
            })
            .execute(),
        );
      } catch (error) {
        if (violation(ctx, error) !== 'unique') throw error;
        if ((await findByName(host.name)) !== undefined) {
          throw alreadyExists(`a host named ${host.name} already exists`, { name: host.name }, error);
        }
        throw alreadyExists(`a host with id ${host.id} already exists`, { id: host.id }, error);
      }
      return host;
    },

    get,

    async require(id: string): Promise<Host> {
      const host = await get(id);
      if (host === undefined) throw notFound('host', id);
      return host;
    },

    findByName,

    async list(): Promise<Host[]> {
      const rows = await ctx.db().selectFrom('hosts').selectAll().orderBy('name').execute();
      return rows.map((row) => toHost(row, ctx.dialect));
    },

    async setConnector(id: string, connector: Connector): Promise<Host> {
      const valid = connectorWithoutSecrets(parseWith(zConnector, connector, 'connector'));
      const row = await ctx
        .db()
        .updateTable('hosts')
        .set({ connector: ctx.dialect.encodeJson(valid), updated_at: ctx.now() })
        .where('id', '=', id)
        .returningAll()
        .executeTakeFirst();
      if (row === undefined) throw notFound('host', id);
      return toHost(row, ctx.dialect);
    },

    async recordAgent(id: string, agent: NewHostAgent): Promise<Host> {
      const valid = parseWith(zNewHostAgent, agent, 'host agent');
      const now = ctx.now();
      const row = await ctx
        .db()
        .updateTable('hosts')
        .set({
          agent_instance: valid.instance,
          agent_version: valid.version,
          agent_transports: ctx.dialect.encodeJson(valid.transports),
          agent_transport_info: valid.transportInfo === undefined ? null : ctx.dialect.encodeJson(valid.transportInfo),
          agent_consumers: ctx.dialect.encodeJson(valid.consumers),
          agent_seen_at: now,
          updated_at: now,
        })
        .where('id', '=', id)
        .returningAll()
        .executeTakeFirst();
      if (row === undefined) throw notFound('host', id);
      return toHost(row, ctx.dialect);
    },

    async touchAgent(id: string, instance: string): Promise<Host> {
      const worker = parseWith(zInstance, instance, 'agent instance');
      // A CAS on the instance: an agent replaced by a newer registration is refused here.
      const row = await ctx
        .db()
        .updateTable('hosts')
        .set({ agent_seen_at: ctx.now() })
        .where('id', '=', id)
        .where('agent_instance', '=', worker)
        .returningAll()
        .executeTakeFirst();
      if (row !== undefined) return toHost(row, ctx.dialect);
      const current = await get(id);
      if (current === undefined) throw notFound('host', id);
      throw agentReplaced(id, worker, current.agent?.instance ?? null);
    },

    async delete(id: string): Promise<void> {
      // One transaction: a refusal removes nothing, not even the finished items and device records.
      await ctx.atomically(async () => {
        const host = await get(id);
        if (host === undefined) return;
        // Only finished items: one an agent may still run (made meanwhile) keeps the host, through
        // the conditions below or, made after them, through its foreign key.
        await ctx.db().deleteFrom('work_items').where('host_id', '=', id).where('state', 'in', ['done', 'failed']).execute();
        await ctx.db().deleteFrom('host_devices').where('host_id', '=', id).execute();
        let deleted: bigint;
        try {
          const result = await ctx.dialect.guarded(() =>
            ctx
              .db()
              .deleteFrom('hosts')
              .where('id', '=', id)
              .where((eb) =>
                eb.and([
                  eb.not(eb.exists(eb.selectFrom('servers').select('servers.id').where('servers.host_id', '=', id))),
                  eb.not(eb.exists(eb.selectFrom('attachments').select('attachments.id').where('attachments.host_id', '=', id))),
                  eb.not(eb.exists(eb.selectFrom('work_items').select('work_items.id').where('work_items.host_id', '=', id))),
                ]),
              )
              .executeTakeFirst(),
          );
          deleted = result.numDeletedRows;
        } catch (error) {
          if (violation(ctx, error) !== 'foreign_key') throw error;
          // A row made meanwhile references it (the failed statement ends the transaction: no count).
          throw hostInUse(host.name, id, { servers: 0, attachments: 0, openWorkItems: 0 });
        }
        if (deleted === 0n && (await get(id)) !== undefined) throw hostInUse(host.name, id, await usage(ctx, id));
      });
    },
  };
}

/** What still references host `id`: its servers, its attachments, its pending or claimed work items. */
async function usage(ctx: RepositoryContext, id: string): Promise<{ servers: number; attachments: number; openWorkItems: number }> {
  const db = ctx.db();
  // One after the other: inside a transaction they share one connection.
  const servers = await db.selectFrom('servers').select((eb) => eb.fn.countAll<number | string | bigint>().as('n')).where('host_id', '=', id).executeTakeFirst();
  const attachments = await db.selectFrom('attachments').select((eb) => eb.fn.countAll<number | string | bigint>().as('n')).where('host_id', '=', id).executeTakeFirst();
  const openWorkItems = await db
    .selectFrom('work_items')
    .select((eb) => eb.fn.countAll<number | string | bigint>().as('n'))
    .where('host_id', '=', id)
    .where('state', 'in', ['pending', 'claimed'])
    .executeTakeFirst();
  return { servers: Number(servers?.n ?? 0), attachments: Number(attachments?.n ?? 0), openWorkItems: Number(openWorkItems?.n ?? 0) };
}
