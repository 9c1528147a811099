import type { DriverCatalog } from '../catalog.js';
import type { BerthConfig } from '../config.js';
import type { Consumer } from '../contracts/consumer.js';
import { BerthError } from '../errors.js';
import { consumerNameFor, GUEST_CONSUMER_PACKAGES } from '../hypervisor.js';
import type { Host, Server } from '../model.js';

/** What picking a server's consumer needs. */
export interface ServerConsumerDeps {
  catalog: DriverCatalog;
  config: BerthConfig;
}

/**
 * The consumer that publishes `server`'s volumes: the one its hypervisor names (`qemu`, `libvirt`),
 * else the configured default. When this process lacks it but the server's host has a `berth
 * agent` that loaded it, the host steps run there by name: the consumer returned then only carries
 * that name. Neither: CONFIG, before anything is touched.
 */
export function serverConsumer(deps: ServerConsumerDeps, server: Server, host?: Host): Consumer {
  const name = consumerNameFor(server, deps.config.consumer);
  if (deps.catalog.consumerNames().includes(name)) return deps.catalog.consumer(name);
  if (host?.agent?.consumers.includes(name)) return agentConsumer(name, host);
  const type = server.hypervisor?.type ?? 'host';
  const pkg = GUEST_CONSUMER_PACKAGES[name];
  throw new BerthError('CONFIG', `server ${server.name} needs the ${name} consumer${type === 'host' ? '' : ` (its hypervisor is ${type})`}, and it is not installed`, {
    hint: pkg
      ? `add "${pkg}" to the config's plugins (and to its host's \`berth agent\`), or recreate the server without --hypervisor`
      : `installed consumers: ${deps.catalog.consumerNames().join(', ') || 'none'} (\`berth doctor\` lists them)`,
    details: { server: server.name, consumer: name, installed: deps.catalog.consumerNames() },
  });
}

/** A consumer only the host's agent has: its steps go to the agent by name, never run here. */
function agentConsumer(name: string, host: Host): Consumer {
  const elsewhere = (): never => {
    throw new BerthError('INTERNAL', `the ${name} consumer runs on host ${host.name}'s agent, not in this process`);
  };
  return { name, publish: async () => elsewhere(), unpublish: async () => elsewhere() };
}
