import { parseWith } from '../errors.js';
import type { Server } from '../model.js';
import { zCreateServerRequest } from '../requests.js';
import type { CreateServerRequest, ProjectScope, Ref } from '../service.js';
import type { ServiceParts } from './parts.js';
import { projectOf, resolveServer } from './resolve.js';

/** Create a server on a host (default this one; another is recorded by name on first use). */
export async function createServer(parts: ServiceParts, request: CreateServerRequest): Promise<Server> {
  const req = parseWith(zCreateServerRequest, request, 'server');
  const host = req.host === undefined || req.host === parts.identity.hostname ? await parts.localHost.host() : await parts.localHost.findOrCreateHost(req.host);
  return parts.store.servers.create({ name: req.name, projectId: projectOf(parts.config, req), hostId: host.id, ...(req.hypervisor ? { hypervisor: req.hypervisor } : {}) });
}

/** Delete a server (the store refuses one with attachments), under its lock. */
export async function deleteServer(parts: ServiceParts, ref: Ref, scope: ProjectScope): Promise<void> {
  const server = await resolveServer(parts.store, ref, projectOf(parts.config, scope));
  await parts.serverLocks.withLock(server.id, () => parts.store.servers.delete(server.id));
}
