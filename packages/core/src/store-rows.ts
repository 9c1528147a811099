import { z } from 'zod';
import { connectorWithoutSecrets, recordWithoutSecrets, redactConnectionInfo } from './connection.js';
import { BerthError, parseWith } from './errors.js';
import { lazySchema } from './lazy-schema.js';
import { isoTimestamp } from './monotonic-clock.js';
import { zAttachment, zHostDevice, zOperation, zServer, type Attachment, type HostDevice, type Operation, type Server } from './model.js';
import type { NewAttachment, NewHostDevice, NewOperation, NewServer, NewWorkItem, OperationPruneFilter, WorkItemOutcome } from './store.js';
import { zWorkItem, zWorkItemError, type WorkItem } from './work-item.js';

// New rows as every Store implementation writes them (SQL or memory): one place says what a new
// row holds, and each is validated (VALIDATION) before anything is written.

/** A new server; no hypervisor given is the host itself (`{type: 'host'}`), as every store returns it. */
export function newServerRow(input: NewServer, id: string, now: string): Server {
  return parseWith(
    zServer,
    {
      id,
      name: input.name,
      projectId: input.projectId,
      hostId: input.hostId,
      hypervisor: input.hypervisor ?? { type: 'host' },
      createdAt: now,
      updatedAt: now,
    },
    'server',
  );
}

/** A new attachment: `reserved`, nothing connected yet, the connector without secrets. */
export function newAttachmentRow(input: NewAttachment, id: string, now: string): Attachment {
  return parseWith(
    zAttachment,
    {
      id,
      volumeId: input.volumeId,
      serverId: input.serverId,
      hostId: input.hostId,
      status: 'reserved',
      mode: input.mode,
      transport: null,
      connector: input.connector == null ? null : connectorWithoutSecrets(input.connector),
      connectionInfo: null,
      device: null,
      publishedPath: null,
      guestDevice: null,
      serial: null,
      hostRoot: null,
      timings: {},
      error: null,
      createdAt: now,
      updatedAt: now,
    },
    'attachment',
  );
}

/** A new operation: `running`, with an empty journal. */
export function newOperationRow(input: NewOperation, id: string, now: string): Operation {
  return parseWith(
    zOperation,
    {
      id,
      kind: input.kind,
      state: 'running',
      volumeId: input.volumeId ?? null,
      serverId: input.serverId ?? null,
      attachmentId: input.attachmentId ?? null,
      hostId: input.hostId ?? null,
      idempotencyKey: input.idempotencyKey ?? null,
      owner: input.owner ?? null,
      deadlineAt: input.deadlineAt,
      startedAt: now,
      endedAt: null,
      error: null,
      result: null,
      steps: [],
    },
    'operation',
  );
}

/** A device record (new, or replacing one made at `createdAt`); secrets never reach the store. */
export function hostDeviceRow(input: NewHostDevice, createdAt: string, now: string): HostDevice {
  return parseWith(
    zHostDevice,
    {
      hostId: input.hostId,
      volumeId: input.volumeId,
      transport: input.transport,
      connectionInfo: redactConnectionInfo(input.connectionInfo),
      device: input.device,
      operationId: input.operationId ?? null,
      hostRoot: input.hostRoot ?? null,
      createdAt,
      updatedAt: now,
    },
    'device record',
  );
}

/**
 * `devices` without repeats (the same JSON text) and without nulls, in their first order: the
 * answer of `AttachmentRepository.devicesOfOtherVolumes`, where an attachment's device and berth's
 * record of it are usually one device twice.
 */
export function distinctDevices<T>(devices: ReadonlyArray<T | null>): T[] {
  const seen = new Set<string>();
  const kept: T[] = [];
  for (const device of devices) {
    if (device === null) continue;
    const key = JSON.stringify(device);
    if (seen.has(key)) continue;
    seen.add(key);
    kept.push(device);
  }
  return kept;
}

/** A lease length: whole milliseconds, at most a day (a longer lease is a unit mistake). */
export const zLeaseMs = z.number().int().min(0).max(86_400_000);

/**
 * An `OperationRepository.prune` filter, checked, with `endedBefore` in the stores' own timestamp
 * form (microseconds and `Z`, `createMonotonicClock`'s) so that comparing the text compares the times.
 */
export function operationPruneFilter(filter: OperationPruneFilter): Required<Pick<OperationPruneFilter, 'endedBefore' | 'dryRun'>> & Pick<OperationPruneFilter, 'limit'> {
  const valid = parseWith(zOperationPruneFilter, filter, 'operation prune');
  return {
    endedBefore: STAMP.test(valid.endedBefore) ? valid.endedBefore : isoTimestamp(Date.parse(valid.endedBefore)),
    dryRun: valid.dryRun ?? false,
    ...(valid.limit === undefined ? {} : { limit: valid.limit }),
  };
}
const STAMP = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;
const zOperationPruneFilter = lazySchema(() => z.strictObject({
  endedBefore: z.string().datetime({ offset: true }),
  limit: z.number().int().min(1).optional(),
  dryRun: z.boolean().optional(),
}));

/** The lease a new operation asks for (validated), undefined for none; VALIDATION for a lease without an owner. */
export function operationLeaseMs(input: NewOperation): number | undefined {
  const leaseMs = input.leaseMs === undefined ? undefined : parseWith(zLeaseMs, input.leaseMs, 'operation lease');
  if (leaseMs !== undefined && (input.owner ?? null) === null) {
    throw new BerthError('VALIDATION', 'invalid operation: a lease needs an owner', {
      hint: 'set owner (the process that heart-beats the lease) or leave leaseMs out',
    });
  }
  return leaseMs;
}

/** A new work item: `pending`, never claimed, its payload without secrets. */
export function newWorkItemRow(input: NewWorkItem, id: string, now: string): WorkItem {
  return parseWith(
    zWorkItem,
    {
      id,
      operationId: input.operationId,
      hostId: input.hostId,
      step: input.step,
      state: 'pending',
      payload: recordWithoutSecrets(input.payload ?? {}),
      result: null,
      error: null,
      attempts: 0,
      leaseOwner: null,
      leaseExpiresAt: null,
      createdAt: now,
      updatedAt: now,
    },
    'work item',
  );
}

const zWorkItemOutcome = z.object({
  state: z.enum(['done', 'failed']),
  result: z.record(z.string(), z.unknown()).nullable().optional(),
  error: zWorkItemError.nullable().optional(),
});

/** How an agent finished a work item, validated, as it is stored: result without secrets, nulls for absent. */
export function workItemOutcomeRow(outcome: WorkItemOutcome): Pick<WorkItem, 'state' | 'result' | 'error'> {
  const valid = parseWith(zWorkItemOutcome, outcome, 'work item outcome');
  return {
    state: valid.state,
    result: valid.result === undefined || valid.result === null ? null : recordWithoutSecrets(valid.result),
    error: valid.error ?? null,
  };
}
