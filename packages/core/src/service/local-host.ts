import type { BerthConfig } from '../config.js';
import type { Connector } from '../connection.js';
import type { HostIdentity } from '../host-identity.js';
import type { Host, Server } from '../model.js';
import type { Store } from '../store.js';
import { BerthError } from '../errors.js';

/** A host name made into a valid server name. */
export function serverNameFor(hostname: string): string {
  const cleaned = hostname.replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '');
  return (cleaned || 'localhost').slice(0, 63);
}

/**
 * Base connector properties of the host `identity` describes (host name, ip, platform, the
 * configured multipath); no store needed, so `berth agent` builds its connector with it too.
 */
export function baseConnectorOf(identity: HostIdentity, config: Pick<BerthConfig, 'connector'>): Connector {
  return {
    host: identity.hostname,
    ...(identity.ips[0] ? { ip: identity.ips[0] } : {}),
    platform: identity.platform,
    os_type: identity.osType,
    multipath: config.connector.multipath,
    enforce_multipath: config.connector.enforce_multipath,
  };
}

/** Find a row, else create it; another process that created it between the two wins. */
async function findOrCreate<T>(find: () => Promise<T | undefined>, create: () => Promise<T>): Promise<T> {
  const found = await find();
  if (found) return found;
  try {
    return await create();
  } catch (error) {
    const again = await find();
    if (again) return again;
    throw error;
  }
}

/** This host's own records (its host row, its server per project) and its base connector, made on first use. */
export class LocalHost {
  private record: Host | undefined;

  constructor(
    private readonly store: Store,
    private readonly identity: HostIdentity,
    private readonly config: BerthConfig,
  ) {}

  /** The host row of this machine. */
  async host(): Promise<Host> {
    this.record ??= await this.findOrCreateHost(this.identity.hostname);
    return this.record;
  }

  /** The host row named `name`, created if missing. */
  findOrCreateHost(name: string): Promise<Host> {
    return findOrCreate(() => this.store.hosts.findByName(name), () => this.store.hosts.create({ name }));
  }

  /** This host's own server in `project`, created on first use. */
  async server(project: string): Promise<Server> {
    const host = await this.host();
    const name = serverNameFor(this.identity.hostname);
    const server = await findOrCreate(
      () => this.store.servers.findByName(project, name),
      () => this.store.servers.create({ name, projectId: project, hostId: host.id }),
    );
    // A server someone made with this host's name on another host, or for a guest: "no server"
    // means this host itself, so it is refused rather than attached to elsewhere (an explorer's
    // attach without a server went to host h2).
    const guest = server.hypervisor !== undefined && server.hypervisor.type !== 'host';
    if (server.hostId !== host.id || guest) {
      throw new BerthError('CONFLICT', `server ${name} in project ${project} is ${guest ? `a guest (hypervisor ${server.hypervisor?.type})` : 'on another host'}, not this host (${this.identity.hostname}); an attach without a server means this host itself`, {
        hint: `name the server to attach to (--server / "server"), or delete or rename server ${name} so that berth can make this host's own`,
        details: { server: name, serverId: server.id, projectId: project, reason: 'local-server-elsewhere' },
      });
    }
    return server;
  }

  /** Base connector properties of this host (host name, ip, platform, the configured multipath). */
  baseConnector(): Connector {
    return baseConnectorOf(this.identity, this.config);
  }
}
