import { BerthError, parseWith } from '../errors.js';
import { guestKey, localGuestKey } from '../hypervisor.js';
import type { Host, Server } from '../model.js';
import { zCreateServerRequest } from '../requests.js';
import type { CreateServerRequest, ProjectScope, Ref } from '../service.js';
import type { ServiceParts } from './parts.js';
import { projectOf, resolveServer } from './resolve.js';

/** Create a server on a host (default this one; another is recorded by name on first use). */
export async function createServer(parts: ServiceParts, request: CreateServerRequest): Promise<Server> {
  const req = parseWith(zCreateServerRequest, request, 'server');
  const host = req.host === undefined || req.host === parts.identity.hostname ? await parts.localHost.host() : await hostNamed(parts, req.host);
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

/**
 * The host a new server names, made when new — but not beside one whose name differs only in case:
 * host names are case-insensitive (RFC 1123), and `H1` beside `h1` would be a host no agent
 * registers for (its token names `h1`), where every attach waits out its deadline (an explorer).
 */
async function hostNamed(parts: ServiceParts, name: string): Promise<Host> {
  const exact = await parts.store.hosts.findByName(name);
  if (exact) return exact;
  const lower = name.toLowerCase();
  const other = (await parts.store.hosts.list()).find((h) => h.name.toLowerCase() === lower);
  if (other) {
    throw new BerthError('CONFLICT', `host ${name} would be a second name of host ${other.name} (host names are not case-sensitive)`, {
      hint: `name it as it is known: --host ${other.name}`,
      details: { host: name, existing: other.name, hostId: other.id, reason: 'host-name-case' },
    });
  }
  return parts.localHost.findOrCreateHost(name);
}
