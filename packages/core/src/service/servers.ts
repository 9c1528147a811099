import { BerthError, parseWith } from '../errors.js';
import { guestKey, localGuestKey } from '../hypervisor.js';
import type { Server } from '../model.js';
import { zCreateServerRequest } from '../requests.js';
import type { CreateServerRequest, ProjectScope, Ref } from '../service.js';
import type { ServiceParts } from './parts.js';
import { projectOf, resolveServer } from './resolve.js';

/** Create a server on a host (default this one; another is recorded by name on first use). */
export async function createServer(parts: ServiceParts, request: CreateServerRequest): Promise<Server> {
  const req = parseWith(zCreateServerRequest, request, 'server');
  const host = req.host === undefined || req.host === parts.identity.hostname ? await parts.localHost.host() : await parts.localHost.findOrCreateHost(req.host);
  const projectId = projectOf(parts.config, req);
  const record = { name: req.name, projectId, hostId: host.id, ...(req.hypervisor ? { hypervisor: req.hypervisor } : {}) };
  // On this host the QMP socket's symlinks are resolved (another host's paths are that host's).
  const local = host.id === (await parts.localHost.host()).id;
  const keyOf = (hypervisor: Server['hypervisor']): Promise<string | undefined> => (local ? localGuestKey(hypervisor) : Promise.resolve(guestKey(hypervisor)));
  const guest = await keyOf(req.hypervisor);
  if (guest === undefined) return parts.store.servers.create(record);
  // One server per guest: two records of one guest would each unplug the other's disks (a
  // detach of one, reconcile's "disk no attachment of this server accounts for"). Checked and
  // created in one transaction, so two creates at once cannot both pass.
  return parts.store.transaction(async (tx) => {
    let same: Server | undefined;
    for (const s of await tx.servers.list({ hostId: host.id })) {
      if (s.hypervisor === undefined || s.hypervisor.type === 'host') continue;
      if ((await keyOf(s.hypervisor)) === guest) {
        same = s;
        break;
      }
    }
    if (same) {
      const who = same.projectId === projectId ? `server ${same.name}` : 'a server of another project';
      const what = req.hypervisor?.type === 'qemu' ? `QMP socket ${req.hypervisor.qmp}` : `libvirt domain ${req.hypervisor?.type === 'libvirt' ? req.hypervisor.domain : ''}`;
      throw new BerthError('CONFLICT', `${who} already reaches the guest at ${what} on host ${host.name}: one guest is one server`, {
        hint: same.projectId === projectId ? `attach to ${same.name} (--server ${same.name}); several attachments of it are fine` : 'ask the owner of that guest, or use another guest',
        details: { hostId: host.id, ...(same.projectId === projectId ? { server: same.name } : {}) },
      });
    }
    return tx.servers.create(record);
  });
}

/** Delete a server (the store refuses one with attachments), under its lock. */
export async function deleteServer(parts: ServiceParts, ref: Ref, scope: ProjectScope): Promise<void> {
  const server = await resolveServer(parts.store, ref, projectOf(parts.config, scope));
  await parts.serverLocks.withLock(server.id, () => parts.store.servers.delete(server.id));
}
