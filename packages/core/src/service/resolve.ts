import type { BerthConfig } from '../config.js';
import { BerthError } from '../errors.js';
import { zId, type Attachment, type Operation, type Server, type Volume } from '../model.js';
import type { ProjectScope, Ref } from '../service.js';
import type { Store } from '../store.js';

/** Whether a reference is an id (else it is a name). */
// A UUID is 36 characters: a name of any other length is refused before zod builds a failure for it
// (most references are names, and a failed safeParse costs more than the lookup's own work).
export const isUuid = (ref: string): boolean => ref.length === 36 && zId.safeParse(ref).success;

/**
 * The host `ref` names among `hosts`, as `forgetHost` resolves it: the one with that id when `ref`
 * is UUID-shaped, else the one with that name (a host an older berth let be named like a UUID is
 * reached by its own id).
 */
export function pickHost<T extends { id: string; name: string }>(hosts: readonly T[], ref: string): T | undefined {
  return isUuid(ref) ? hosts.find((h) => h.id === ref) : hosts.find((h) => h.name === ref);
}

/** The project a request acts in. */
export function projectOf(config: BerthConfig, scope: ProjectScope): string {
  return scope.projectId ?? config.defaultProject;
}

/** The volume `ref` (id or name) names in `project`; NOT_FOUND otherwise. */
export async function resolveVolume(store: Store, ref: Ref, project: string): Promise<Volume> {
  const volume = isUuid(ref) ? await store.volumes.get(ref) : await store.volumes.findByName(project, ref);
  if (!volume || volume.projectId !== project) {
    throw new BerthError('NOT_FOUND', `no volume ${JSON.stringify(ref)}`, { hint: 'list volumes with `berth volume list`' });
  }
  return volume;
}

/** The server `ref` (id or name) names in `project`; NOT_FOUND otherwise. */
export async function resolveServer(store: Store, ref: Ref, project: string): Promise<Server> {
  const server = isUuid(ref) ? await store.servers.get(ref) : await store.servers.findByName(project, ref);
  if (!server || server.projectId !== project) {
    throw new BerthError('NOT_FOUND', `no server ${JSON.stringify(ref)}`, { hint: 'list servers with `berth server list`' });
  }
  return server;
}

/** The attachment `id` of a volume in `project`; NOT_FOUND otherwise (another project's too). */
export async function resolveAttachment(store: Store, id: string, project: string): Promise<Attachment> {
  const notFound = new BerthError('NOT_FOUND', `no attachment ${id}`, { hint: 'list them with `berth attachment list`' });
  if (!isUuid(id)) throw notFound;
  const attachment = await store.attachments.get(id);
  if (!attachment) throw notFound;
  const volume = await store.volumes.get(attachment.volumeId);
  if (volume?.projectId !== project) throw notFound;
  return attachment;
}

/** The operation `id`; NOT_FOUND otherwise. */
export async function resolveOperation(store: Store, id: string): Promise<Operation> {
  const operation = isUuid(id) ? await store.operations.get(id) : undefined;
  if (!operation) throw new BerthError('NOT_FOUND', `no operation ${id}`, { hint: 'list them with `berth operation list`' });
  return operation;
}
