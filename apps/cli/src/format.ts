import type { Attachment, Host, Operation, OperationStep, Server, Volume } from '@berth/core';
import { formatSize } from '@berth/runtime/size';

/** The order steps are printed in: the attach pipeline, then the detach mirror. */
export const STEP_ORDER: readonly string[] = [
  'reserve',
  'dispatch',
  'connector',
  'initialize',
  'connect',
  'publish',
  'complete',
  'begin_detaching',
  'unpublish',
  'disconnect',
  'terminate',
  'delete_attachment',
];

/** Milliseconds, readable (`3ms`, `1.2s`). */
export function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)}s`;
}

/**
 * Per-step timings with their total (`reserve 2ms, connect 5ms (total 7ms)`), in pipeline order, or
 * in the order given when `asGiven` (a journal's order is the order the steps ran).
 */
export function formatTimings(timings: Readonly<Record<string, number>>, asGiven = false): string {
  const names = asGiven ? Object.keys(timings) : Object.keys(timings).sort((a, b) => rank(a) - rank(b));
  if (names.length === 0) return '-';
  const total = names.reduce((sum, name) => sum + (timings[name] ?? 0), 0);
  const parts = names.map((name) => `${name} ${formatMs(timings[name] ?? 0)}`);
  return `${parts.join(', ')} (total ${formatMs(total)})`;
}

function rank(step: string): number {
  const index = STEP_ORDER.indexOf(step);
  return index === -1 ? STEP_ORDER.length : index;
}

/** A volume's size for people (`1 GiB`). */
export function formatVolumeSize(volume: Pick<Volume, 'sizeBytes'>): string {
  return formatSize(volume.sizeBytes);
}

/** Lookup tables that turn ids into names for display. */
export interface NameIndex {
  volumes: ReadonlyMap<string, Volume>;
  servers: ReadonlyMap<string, Server>;
  hosts: ReadonlyMap<string, Host>;
}

/** Build a NameIndex from lists. */
export function nameIndex(volumes: readonly Volume[], servers: readonly Server[], hosts: readonly Host[]): NameIndex {
  return {
    volumes: new Map(volumes.map((v) => [v.id, v])),
    servers: new Map(servers.map((s) => [s.id, s])),
    hosts: new Map(hosts.map((h) => [h.id, h])),
  };
}

/** `name` when known, else the id. */
export function nameOf(map: ReadonlyMap<string, { name: string }>, id: string | null): string {
  if (id === null) return '-';
  return map.get(id)?.name ?? id;
}

/** The device cell of an attachment (`/dev/loop3 -> /dev/berth/<id>`). */
export function formatDevice(attachment: Pick<Attachment, 'device' | 'publishedPath' | 'hostRoot'>): string {
  const device = machinePath(attachment);
  return attachment.publishedPath === null ? device : `${device} (${attachment.publishedPath})`;
}

/**
 * The attachment's device as a path on this machine: the transport's path under the root of the
 * host it connected on (`--simulate`: `<data>/simhost/dev/sda`, where `/dev/sda` does not exist
 * here), unchanged on the machine itself; `-` without a device.
 */
export function machinePath(attachment: Pick<Attachment, 'device' | 'hostRoot'>): string {
  const device = attachment.device?.path;
  if (device === undefined) return '-';
  const root = attachment.hostRoot;
  return root === null || root === undefined || root === '/' || !device.startsWith('/') ? device : `${root.replace(/\/+$/, '')}${device}`;
}

/** One journal line per step: `seq  name  phase  state  duration  error`. */
export function journalRows(operation: Pick<Operation, 'steps'>): OperationStep[] {
  return [...operation.steps].sort((a, b) => a.seq - b.seq);
}

/** How long an operation took, or `running`. */
export function operationDuration(operation: Pick<Operation, 'startedAt' | 'endedAt'>): string {
  if (operation.endedAt === null) return 'running';
  const ms = Date.parse(operation.endedAt) - Date.parse(operation.startedAt);
  return Number.isFinite(ms) ? formatMs(ms) : '-';
}

/** `code: message` of a stored error summary, or `-`. */
export function formatErrorSummary(error: { code: string; message: string } | null): string {
  return error === null ? '-' : `${error.code}: ${error.message}`;
}

/** Durations of an operation's forward steps, from its journal, in the order they ran. */
export function operationTimings(operation: Pick<Operation, 'steps'>): Record<string, number> {
  const timings: Record<string, number> = {};
  for (const step of [...operation.steps].sort((a, b) => a.seq - b.seq)) {
    if (step.phase === 'do' && step.durationMs !== null) timings[step.name] = step.durationMs;
  }
  return timings;
}

/**
 * `berth reconcile`'s first line when it found no difference: "agree" only when every part could
 * be checked — what could not be looked at may be exactly what differs.
 */
export function noDifferenceHeadline(unchecked: number, where: string): string {
  if (unchecked === 0) return `No differences: the database, the backends' exports and ${where} agree.`;
  return `No differences in what could be checked; ${unchecked} part${unchecked === 1 ? '' : 's'} of ${where} could not be (below): run it again once ${unchecked === 1 ? 'it answers' : 'they answer'}.`;
}
