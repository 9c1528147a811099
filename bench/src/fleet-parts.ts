import { definePlugin, PLUGIN_API_VERSION } from '@berth/core';

// The parts the `fleet` benchmark runs with, shared by its main thread (agents, embedded) and
// its replica threads (`fleet-replica.ts`).

export const FAST = 'bench-fast';

/**
 * A backend, transport and consumer that do nothing and keep nothing: a volume is a name, its
 * connection `{ driver_volume_type: 'bench-fast' }`, its device `/dev/bench-fast/<volume id>`,
 * which is never opened. Only for measuring the control plane.
 */
export const fastPlugin = definePlugin({
  name: FAST,
  apiVersion: PLUGIN_API_VERSION,
  register: (r) => {
    r.backend(FAST, () => ({
      name: FAST,
      create: async (volume) => ({ providerLocation: `${FAST}:${volume.id}` }),
      delete: async () => undefined,
      initializeConnection: async (volume) => ({ driver_volume_type: FAST, data: { volume_id: volume.id } }),
      terminateConnection: async () => undefined,
      check: async () => ({ ok: true, summary: 'does nothing (benchmark)' }),
    }));
    r.transport(FAST, () => ({
      name: FAST,
      protocols: [FAST],
      connectorProperties: async () => ({}),
      connect: async (connection) => ({ path: `/dev/${FAST}/${String(connection.data.volume_id)}`, type: 'block' }),
      disconnect: async () => undefined,
      check: async () => ({ ok: true, summary: 'does nothing (benchmark)' }),
    }));
    r.consumer(FAST, () => ({ name: FAST, publish: async (_server, device) => ({ path: device.path }), unpublish: async () => undefined }));
  },
});

/** The config every berth of this benchmark runs with: the fast parts by default. */
export const FAST_CONFIG = { defaultBackend: FAST, consumer: FAST, logLevel: 'error' };

/** What the main thread tells a replica thread to start with. */
export interface ReplicaStart {
  dataDir: string;
  storeUrl: string;
  env: Record<string, string>;
  /** Count the replica's PostgreSQL statements by kind (the trace). */
  countStatements?: boolean;
}

/** A statement's kind for counting: its verb and first table, e.g. `update work_items`, `begin`. */
export function statementKind(text: string): string {
  const flat = text.replace(/\s+/g, ' ').trim().toLowerCase();
  const verb = /^(with|select|insert into|update|delete from|start transaction|begin|commit|rollback|savepoint|release|set|listen|unlisten|notify|lock)\b/.exec(flat)?.[1] ?? flat.slice(0, 20);
  const table = /\b(?:from|into|update|table)\s+"?([a-z_]+)"?/.exec(flat)?.[1];
  const notify = flat.includes('pg_notify') ? ' (pg_notify)' : '';
  return table && verb !== 'begin' && verb !== 'start transaction' ? `${verb} ${table}${notify}` : `${verb}${notify}`;
}

/** What a replica thread posts: its URL once listening, its store's transaction attempts when asked and once closed, or why it failed. */
export type ReplicaMessage =
  | { kind: 'listening'; url: string }
  | { kind: 'attempts'; attempts: number[]; statements: Record<string, number> }
  | { kind: 'closed'; attempts: number[]; statements: Record<string, number> }
  | { kind: 'failed'; message: string };
