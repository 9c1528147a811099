import type { Attachment, DoctorEntry, Host, Hypervisor, Operation, OperationStep, Server, Volume } from '@berth/core';
import type { Column } from './table.js';
import {
  formatDevice,
  formatErrorSummary,
  formatMs,
  formatTimings,
  formatVolumeSize,
  machinePath,
  nameOf,
  operationDuration,
  type NameIndex,
} from './format.js';

/** Columns of `berth volume list`. */
export const volumeColumns: ReadonlyArray<Column<Volume>> = [
  { header: 'name', get: (v) => v.name },
  { header: 'id', get: (v) => v.id },
  { header: 'size', get: (v) => formatVolumeSize(v) },
  { header: 'status', get: (v) => v.status },
  { header: 'backend', get: (v) => v.backend },
  { header: 'multiattach', get: (v) => (v.multiattach ? 'yes' : 'no') },
];

/** Fields of one volume. */
export function volumeFields(volume: Volume): Array<[string, string]> {
  return [
    ['id', volume.id],
    ['name', volume.name],
    ['size', `${formatVolumeSize(volume)} (${volume.sizeBytes} bytes)`],
    ['status', volume.status],
    ['backend', volume.backend],
    ['multiattach', volume.multiattach ? 'yes' : 'no'],
    ['location', volume.providerLocation ?? '-'],
    ['project', volume.projectId],
    ['created', volume.createdAt],
    ['updated', volume.updatedAt],
  ];
}

/** Whether a host's agent is heard from: `online`, `offline`, or `-` for a host without one (in-process). */
export type AgentState = 'online' | 'offline' | '-';

/**
 * A host's agent state: the API's own word when it sent one, else `online` when the agent was
 * seen within `offlineAfterMs` (the embedded CLI reads the same store the API does).
 */
export function agentStateOf(host: Host, offlineAfterMs: number, now = Date.now()): AgentState {
  const agent = host.agent as (Host['agent'] & { state?: unknown }) | null;
  if (agent === null || agent === undefined) return '-';
  if (agent.state === 'online' || agent.state === 'offline') return agent.state;
  return now - Date.parse(agent.lastSeenAt) <= offlineAfterMs ? 'online' : 'offline';
}

/** Columns of `berth host list`: the host, its agent's state and version, its initiator. */
export function hostColumns(offlineAfterMs: number): Array<Column<Host>> {
  return [
    { header: 'name', get: (h) => h.name },
    { header: 'agent', get: (h) => agentStateOf(h, offlineAfterMs) },
    { header: 'last seen', get: (h) => h.agent?.lastSeenAt ?? '-' },
    { header: 'version', get: (h) => h.agent?.version ?? '-' },
    { header: 'initiator', get: (h) => (typeof h.connector?.initiator === 'string' ? h.connector.initiator : '-') },
    { header: 'id', get: (h) => h.id, wide: true },
  ];
}

/** Columns of `berth server list`. */
export function serverColumns(hosts: ReadonlyMap<string, Host>): Array<Column<Server>> {
  return [
    { header: 'name', get: (s) => s.name },
    { header: 'id', get: (s) => s.id },
    { header: 'host', get: (s) => nameOf(hosts, s.hostId) },
    { header: 'hypervisor', get: (s) => formatHypervisor(s.hypervisor), shrink: true },
    { header: 'created', get: (s) => s.createdAt },
  ];
}

/** What runs a server, in a line: `host`, `qemu (qmp /run/vm-2/qmp.sock, bus pci.0)`, `libvirt (domain web-1, qemu:///system)`. */
export function formatHypervisor(hypervisor: Hypervisor | undefined): string {
  if (hypervisor === undefined || hypervisor.type === 'host') return 'host';
  if (hypervisor.type === 'qemu') return `qemu (qmp ${hypervisor.qmp}, bus ${hypervisor.bus})`;
  return `libvirt (domain ${hypervisor.domain}, ${hypervisor.uri})`;
}

/** Fields of one server. */
export function serverFields(server: Server, hosts: ReadonlyMap<string, Host>): Array<[string, string]> {
  return [
    ['id', server.id],
    ['name', server.name],
    ['host', `${nameOf(hosts, server.hostId)} (${server.hostId})`],
    ['project', server.projectId],
    ['hypervisor', formatHypervisor(server.hypervisor)],
    ['created', server.createdAt],
    ['updated', server.updatedAt],
  ];
}

/** Columns of `berth attachment list`: status, device, host and per-step timings. */
export function attachmentColumns(names: NameIndex): Array<Column<Attachment>> {
  return [
    { header: 'id', get: (a) => a.id },
    { header: 'volume', get: (a) => nameOf(names.volumes, a.volumeId) },
    { header: 'server', get: (a) => nameOf(names.servers, a.serverId) },
    { header: 'host', get: (a) => nameOf(names.hosts, a.hostId), wide: true },
    { header: 'status', get: (a) => a.status },
    { header: 'mode', get: (a) => a.mode, wide: true },
    { header: 'transport', get: (a) => a.transport ?? '-', wide: true },
    { header: 'device', get: (a) => formatDevice(a), shrink: true },
    { header: 'timings', get: (a) => formatTimings(a.timings), wide: true },
  ];
}

/** Fields of one attachment. */
export function attachmentFields(attachment: Attachment, names: NameIndex): Array<[string, string]> {
  const volume = names.volumes.get(attachment.volumeId);
  const server = names.servers.get(attachment.serverId);
  return [
    ['id', attachment.id],
    ['status', attachment.status],
    ['volume', volume === undefined ? attachment.volumeId : `${volume.name} (${volume.id})`],
    ['server', server === undefined ? attachment.serverId : `${server.name} (${server.id})`],
    ['host', `${nameOf(names.hosts, attachment.hostId)} (${attachment.hostId})`],
    ['mode', attachment.mode],
    ['transport', attachment.transport ?? '-'],
    ['connection', attachment.connectionInfo?.driver_volume_type ?? '-'],
    ['device', machinePath(attachment)],
    // Where the transport connected it: `/`, or berth's simulated host's root (`--simulate`).
    ['host root', attachment.hostRoot ?? '-'],
    ['link', attachment.publishedPath ?? '-'],
    ['guest device', attachment.guestDevice ?? '-'],
    ['serial', attachment.serial ?? '-'],
    ['timings', formatTimings(attachment.timings)],
    ['error', attachment.error ?? '-'],
    ['created', attachment.createdAt],
    ['updated', attachment.updatedAt],
  ];
}

/** Columns of `berth operation list`. */
export function operationColumns(volumes: ReadonlyMap<string, Volume>): Array<Column<Operation>> {
  return [
    { header: 'id', get: (o) => o.id },
    { header: 'kind', get: (o) => o.kind },
    { header: 'state', get: (o) => o.state },
    { header: 'volume', get: (o) => nameOf(volumes, o.volumeId) },
    { header: 'started', get: (o) => o.startedAt, wide: true },
    { header: 'took', get: (o) => operationDuration(o) },
    { header: 'error', get: (o) => formatErrorSummary(o.error), shrink: true },
  ];
}

/** Fields of one operation (its journal is printed as a table below them). */
export function operationFields(operation: Operation): Array<[string, string]> {
  return [
    ['id', operation.id],
    ['kind', operation.kind],
    ['state', operation.state],
    ['volume', operation.volumeId ?? '-'],
    ['server', operation.serverId ?? '-'],
    ['attachment', operation.attachmentId ?? '-'],
    ['started', operation.startedAt],
    ['ended', operation.endedAt ?? '-'],
    ['took', operationDuration(operation)],
    ['deadline', operation.deadlineAt],
    ['error', formatErrorSummary(operation.error)],
  ];
}

/** Columns of an operation's journal. */
export const journalColumns: ReadonlyArray<Column<OperationStep>> = [
  { header: '#', get: (s) => String(s.seq) },
  { header: 'step', get: (s) => s.name },
  { header: 'phase', get: (s) => s.phase },
  { header: 'state', get: (s) => s.state },
  { header: 'took', get: (s) => (s.durationMs === null ? '-' : formatMs(s.durationMs)) },
  // A forced detach's step that failed and was gone past reads "done" with what it went past.
  { header: 'error', get: (s) => (typeof s.data?.['forcedPast'] === 'string' ? `gone past (--force): ${s.data['forcedPast']}` : formatErrorSummary(s.error)), shrink: true },
];

/** Columns of `berth doctor`. */
export const doctorColumns: ReadonlyArray<Column<DoctorEntry>> = [
  { header: 'kind', get: (e) => e.kind },
  { header: 'name', get: (e) => e.name },
  { header: 'ok', get: (e) => (e.result.ok ? 'yes' : 'no') },
  { header: 'summary', get: (e) => e.result.summary, shrink: true },
  // The fixes of what is not ok are printed in full under the table; the wide form has a column.
  { header: 'fix', get: (e) => e.result.fix ?? '-', wide: true },
];
