import type { Kysely, Migration, MigrationProvider } from 'kysely';
import type { StoreDialect } from './store-dialect.js';

/**
 * The schema, as ordered migrations written with Kysely's schema builder only. Column types that
 * differ between engines (JSON, booleans) come from the dialect; everything else is portable.
 * Never edit a shipped migration: add the next one.
 */
export function createMigrations(dialect: StoreDialect): Record<string, Migration> {
  return {
    '0001-initial': {
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema
          .createTable('volumes')
          .addColumn('id', 'text', (col) => col.primaryKey())
          .addColumn('name', 'text', (col) => col.notNull())
          .addColumn('project_id', 'text', (col) => col.notNull())
          .addColumn('size_bytes', 'bigint', (col) => col.notNull())
          .addColumn('status', 'text', (col) => col.notNull())
          .addColumn('backend', 'text', (col) => col.notNull())
          .addColumn('multiattach', dialect.booleanType, (col) => col.notNull())
          .addColumn('provider_location', 'text')
          .addColumn('created_at', 'text', (col) => col.notNull())
          .addColumn('updated_at', 'text', (col) => col.notNull())
          .addUniqueConstraint('volumes_project_id_name_key', ['project_id', 'name'])
          .execute();

        await db.schema
          .createTable('hosts')
          .addColumn('id', 'text', (col) => col.primaryKey())
          .addColumn('name', 'text', (col) => col.notNull())
          .addColumn('connector', dialect.jsonType)
          .addColumn('created_at', 'text', (col) => col.notNull())
          .addColumn('updated_at', 'text', (col) => col.notNull())
          .addUniqueConstraint('hosts_name_key', ['name'])
          .execute();

        await db.schema
          .createTable('servers')
          .addColumn('id', 'text', (col) => col.primaryKey())
          .addColumn('name', 'text', (col) => col.notNull())
          .addColumn('project_id', 'text', (col) => col.notNull())
          .addColumn('host_id', 'text', (col) => col.notNull().references('hosts.id'))
          .addColumn('created_at', 'text', (col) => col.notNull())
          .addColumn('updated_at', 'text', (col) => col.notNull())
          .addUniqueConstraint('servers_project_id_name_key', ['project_id', 'name'])
          .execute();
        await db.schema.createIndex('servers_host_id_idx').on('servers').column('host_id').execute();

        await db.schema
          .createTable('attachments')
          .addColumn('id', 'text', (col) => col.primaryKey())
          .addColumn('volume_id', 'text', (col) => col.notNull().references('volumes.id'))
          .addColumn('server_id', 'text', (col) => col.notNull().references('servers.id'))
          .addColumn('host_id', 'text', (col) => col.notNull().references('hosts.id'))
          .addColumn('status', 'text', (col) => col.notNull())
          .addColumn('mode', 'text', (col) => col.notNull())
          .addColumn('transport', 'text')
          .addColumn('connector', dialect.jsonType)
          .addColumn('connection_info', dialect.jsonType)
          .addColumn('device', dialect.jsonType)
          .addColumn('published_path', 'text')
          .addColumn('timings', dialect.jsonType, (col) => col.notNull())
          .addColumn('error', 'text')
          .addColumn('created_at', 'text', (col) => col.notNull())
          .addColumn('updated_at', 'text', (col) => col.notNull())
          .execute();
        await db.schema.createIndex('attachments_volume_id_idx').on('attachments').column('volume_id').execute();
        await db.schema.createIndex('attachments_server_id_idx').on('attachments').column('server_id').execute();

        // No foreign keys here: an operation's history outlives the volume it deleted.
        await db.schema
          .createTable('operations')
          .addColumn('id', 'text', (col) => col.primaryKey())
          .addColumn('kind', 'text', (col) => col.notNull())
          .addColumn('state', 'text', (col) => col.notNull())
          .addColumn('volume_id', 'text')
          .addColumn('server_id', 'text')
          .addColumn('attachment_id', 'text')
          .addColumn('host_id', 'text')
          .addColumn('idempotency_key', 'text')
          .addColumn('owner', 'text')
          .addColumn('deadline_at', 'text', (col) => col.notNull())
          .addColumn('started_at', 'text', (col) => col.notNull())
          .addColumn('ended_at', 'text')
          .addColumn('error', dialect.jsonType)
          .addColumn('result', dialect.jsonType)
          .addUniqueConstraint('operations_idempotency_key_key', ['idempotency_key'])
          .execute();
        await db.schema.createIndex('operations_state_idx').on('operations').column('state').execute();
        await db.schema.createIndex('operations_started_at_idx').on('operations').column('started_at').execute();

        await db.schema
          .createTable('operation_steps')
          .addColumn('operation_id', 'text', (col) => col.notNull().references('operations.id').onDelete('cascade'))
          .addColumn('seq', 'integer', (col) => col.notNull())
          .addColumn('name', 'text', (col) => col.notNull())
          .addColumn('phase', 'text', (col) => col.notNull())
          .addColumn('state', 'text', (col) => col.notNull())
          .addColumn('started_at', 'text', (col) => col.notNull())
          .addColumn('ended_at', 'text')
          .addColumn('duration_ms', 'integer')
          .addColumn('error', dialect.jsonType)
          .addColumn('data', dialect.jsonType)
          .addPrimaryKeyConstraint('operation_steps_pkey', ['operation_id', 'seq'])
          .execute();
      },
    },
    // Many hosts: owner leases on operations, and host steps as work items with leases.
    '0002-leases-and-work-items': {
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema.alterTable('operations').addColumn('lease_expires_at', 'text').execute();
        await db.schema
          .createIndex('operations_lease_idx')
          .on('operations')
          .columns(['state', 'lease_expires_at'])
          .execute();

        await db.schema
          .createTable('work_items')
          .addColumn('id', 'text', (col) => col.primaryKey())
          .addColumn('operation_id', 'text', (col) => col.notNull().references('operations.id').onDelete('cascade'))
          .addColumn('host_id', 'text', (col) => col.notNull().references('hosts.id'))
          .addColumn('step', 'text', (col) => col.notNull())
          .addColumn('state', 'text', (col) => col.notNull())
          .addColumn('payload', dialect.jsonType, (col) => col.notNull())
          .addColumn('result', dialect.jsonType)
          .addColumn('error', dialect.jsonType)
          .addColumn('attempts', 'integer', (col) => col.notNull())
          .addColumn('lease_owner', 'text')
          .addColumn('lease_expires_at', 'text')
          .addColumn('created_at', 'text', (col) => col.notNull())
          .addColumn('updated_at', 'text', (col) => col.notNull())
          .execute();
        // claim: a host's pending items, oldest first; expire: claimed items by lease end.
        await db.schema.createIndex('work_items_host_state_idx').on('work_items').columns(['host_id', 'state', 'created_at']).execute();
        await db.schema.createIndex('work_items_state_lease_idx').on('work_items').columns(['state', 'lease_expires_at']).execute();
        await db.schema.createIndex('work_items_operation_id_idx').on('work_items').column('operation_id').execute();

        // Never holds a row: engines whose transactions can lose races (PostgreSQL) lock this
        // table first thing in every store transaction, so that one that keeps losing can run alone.
        await db.schema.createTable('transaction_gate').addColumn('id', 'integer', (col) => col.primaryKey()).execute();
      },
    },
    '0003-host-devices-and-locks': {
      async up(db: Kysely<unknown>): Promise<void> {
        // The ledger of devices berth connected: one per volume per host (attachments of one volume
        // on one host share it). No foreign keys: a record must outlive a lost attachment row, and
        // a volume is not deleted while one exists (core checks).
        await db.schema
          .createTable('host_devices')
          .addColumn('host_id', 'text', (col) => col.notNull())
          .addColumn('volume_id', 'text', (col) => col.notNull())
          .addColumn('transport', 'text', (col) => col.notNull())
          .addColumn('connection_info', dialect.jsonType, (col) => col.notNull())
          .addColumn('device', dialect.jsonType, (col) => col.notNull())
          .addColumn('operation_id', 'text')
          .addColumn('created_at', 'text', (col) => col.notNull())
          .addColumn('updated_at', 'text', (col) => col.notNull())
          .addPrimaryKeyConstraint('host_devices_pkey', ['host_id', 'volume_id'])
          .execute();

        await db.schema
          .createTable('locks')
          .addColumn('key', 'text', (col) => col.primaryKey())
          .addColumn('owner', 'text', (col) => col.notNull())
          .addColumn('acquired_at', 'text', (col) => col.notNull())
          .addColumn('expires_at', 'text', (col) => col.notNull())
          .execute();
      },
    },
    // Many hosts: the `berth agent` registered for each host (the newest one is the only one
    // that may claim the host's work items).
    '0004-host-agents': {
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema.alterTable('hosts').addColumn('agent_instance', 'text').execute();
        await db.schema.alterTable('hosts').addColumn('agent_version', 'text').execute();
        await db.schema.alterTable('hosts').addColumn('agent_transports', dialect.jsonType).execute();
        await db.schema.alterTable('hosts').addColumn('agent_consumers', dialect.jsonType).execute();
        await db.schema.alterTable('hosts').addColumn('agent_seen_at', 'text').execute();
      },
    },
    // Guests (issue 15): a server's hypervisor (which consumer publishes its volumes, and where
    // the guest is), and what a guest consumer published: the disk's name in the guest and its serial.
    '0005-server-hypervisor': {
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema.alterTable('servers').addColumn('hypervisor', dialect.jsonType).execute();
        await db.schema.alterTable('attachments').addColumn('guest_device', 'text').execute();
        await db.schema.alterTable('attachments').addColumn('guest_serial', 'text').execute();
      },
    },
    // Which host an attachment was connected on (issue 11 §3): the root of the host services its
    // transport ran on, so a berth whose transport runs elsewhere (with or without --simulate)
    // refuses to detach or reconcile it instead of acting on the wrong kernel.
    '0006-attachment-host-root': {
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema.alterTable('attachments').addColumn('host_root', 'text').execute();
      },
    },
    // The same for berth's device ledger: a device record whose attachment row is gone is still
    // known to be on the simulated host (or the machine), so reconcile acts on it only from there.
    '0007-host-device-root': {
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema.alterTable('host_devices').addColumn('host_root', 'text').execute();
      },
    },
    // What each transport of a host's agent connects (protocols, priority), so a replica can pick
    // one installed on that host only without the user naming it (issue 10).
    '0008-agent-transport-info': {
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema.alterTable('hosts').addColumn('agent_transport_info', dialect.jsonType).execute();
      },
    },
  };
}

/** A Kysely migration provider over `createMigrations` (no files to find at run time). */
export function createMigrationProvider(dialect: StoreDialect): MigrationProvider {
  return { getMigrations: () => Promise.resolve(createMigrations(dialect)) };
}
