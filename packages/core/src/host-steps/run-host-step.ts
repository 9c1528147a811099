import type { z } from 'zod';
import { HOST_STEP_SCHEMAS, type HostStepName, type HostStepResult } from '../agent-protocol.js';
import type { DriverCatalog } from '../catalog.js';
import type { Connector } from '../connection.js';
import { mergeConnector } from '../connector-properties.js';
import { isIdentityMismatch } from '../device-identity.js';
import { BerthError, parseWith, toBerthError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Attachment } from '../model.js';
import { listTransports } from '../reconcile/index.js';
import type { ReconcileUnchecked } from '../reports.js';

/** What a host step needs of the host it runs on (the in-process service, or `berth agent`). */
export interface HostStepHost {
  catalog: DriverCatalog;
  logger: Logger;
  /** The host's base connector (host name, ip, platform, configured multipath). */
  baseConnector(): Connector;
}

/** Per-run context of a host step. */
export interface HostStepRun {
  /** The operation the step belongs to (the transports' persisted attach state is keyed by it). */
  operationId?: string;
  /** The step's deadline (the operation's, or an undo's). */
  signal: AbortSignal;
}

/**
 * Run one host step on this host: the half of an attach or detach that touches the host (the
 * transport's connect and disconnect, the consumer's publish and unpublish, the connector, the
 * listing reconcile needs). The payload is parsed at this boundary — it may come over HTTP from
 * a replica — and so is the result, so both ends agree on it. The store half (device sharers,
 * the ledger, the lease) stays with the caller: an agent holds no database.
 */
export async function runHostStep<S extends HostStepName>(
  host: HostStepHost,
  step: S,
  payload: unknown,
  run: HostStepRun,
): Promise<HostStepResult<S>> {
  const result = await runParsed(host, step, payload, run);
  const schema: z.ZodType = HOST_STEP_SCHEMAS[step].result;
  return parseWith(schema, result, `${step} result`) as HostStepResult<S>;
}

/** The payload of `step`, parsed (VALIDATION naming the step when it does not fit). */
function input<S extends HostStepName>(step: S, payload: unknown): z.output<(typeof HOST_STEP_SCHEMAS)[S]['payload']> {
  const schema: z.ZodType = HOST_STEP_SCHEMAS[step].payload;
  return parseWith(schema, payload, `${step} payload`) as z.output<(typeof HOST_STEP_SCHEMAS)[S]['payload']>;
}

async function runParsed(host: HostStepHost, step: HostStepName, payload: unknown, run: HostStepRun): Promise<Record<string, unknown>> {
  const { catalog, logger } = host;
  switch (step) {
    case 'connect': {
      const p = input('connect', payload);
      const device = await catalog.transport(p.transport).connect(p.connection, {
        signal: run.signal,
        ...(run.operationId === undefined ? {} : { operationId: run.operationId }),
        volumeId: p.volumeId,
        ...(p.connector ? { connector: p.connector } : {}),
      });
      // Which root the device is on goes back with it: the caller records it on the attachment.
      const hostRoot = catalog.transportHostRoot(p.transport);
      return { device, ...(hostRoot === undefined ? {} : { hostRoot }) };
    }
    case 'release':
    case 'disconnect': {
      const p = input(step, payload);
      try {
        await catalog.transport(p.transport).disconnect(p.connection, p.device, {
          force: p.force,
          signal: run.signal,
          ...(run.operationId === undefined ? {} : { operationId: run.operationId }),
          volumeId: p.volumeId,
          inUse: p.inUse,
        });
        return { identityMismatch: false };
      } catch (error) {
        if (!isIdentityMismatch(error)) throw error;
        logger.warn({ volumeId: p.volumeId, device: p.device?.path }, 'not disconnecting: the device path now names another device');
        return { identityMismatch: true };
      }
    }
    // A consumer publishes on the machine: it is given devices as the machine sees them (a
    // transport on another host root names them under that root), here where that root is known.
    case 'publish': {
      const p = input('publish', payload);
      const device = catalog.machineDevice(p.attachment.transport, p.device);
      return { ...(await catalog.consumer(p.consumer).publish(p.server, device, machineAttachment(catalog, p.attachment))) };
    }
    case 'unpublish': {
      const p = input('unpublish', payload);
      await catalog.consumer(p.consumer).unpublish(p.server, machineAttachment(catalog, p.attachment), { stillShared: p.stillShared });
      return {};
    }
    case 'unpublish_orphan': {
      const p = input('unpublish_orphan', payload);
      const consumer = catalog.consumer(p.consumer);
      if (!consumer.unpublishOrphan) return { supported: false };
      await consumer.unpublishOrphan(p.volumeId, catalog.machineDevice(p.transport ?? null, p.device), { keep: p.keep ?? [] });
      return { supported: true };
    }
    case 'repair_paths': {
      const p = input('repair_paths', payload);
      const transport = catalog.transport(p.transport);
      if (!transport.repairPaths) return { supported: false, changed: false, detail: `transport ${p.transport} cannot repair paths` };
      const repair = await transport.repairPaths(p.listed, {
        signal: run.signal,
        ...(run.operationId === undefined ? {} : { operationId: run.operationId }),
      });
      return { supported: true, changed: repair.changed, detail: repair.detail };
    }
    case 'guest_disks': {
      const p = input('guest_disks', payload);
      // Not installed here (uninstalled while guest servers remain): this guest cannot be looked at, which is no failure of looking.
      if (!catalog.consumerNames().includes(p.consumer)) return { supported: false, disks: null, installed: false };
      const consumer = catalog.consumer(p.consumer);
      if (!consumer.guestDisks) return { supported: false, disks: null };
      return { supported: true, disks: (await consumer.guestDisks(p.server)) ?? null };
    }
    case 'unplug_guest_disk': {
      const p = input('unplug_guest_disk', payload);
      const consumer = catalog.consumer(p.consumer);
      if (!consumer.unplugGuestDisk) {
        throw new BerthError('CONFIG', `the ${p.consumer} consumer cannot unplug a disk from a guest`, {
          hint: 'unplug it by hand (virsh detach-device / QMP device_del), or update the consumer plugin',
          details: { consumer: p.consumer, server: p.server.name },
        });
      }
      await consumer.unplugGuestDisk(p.server, p.disk);
      return {};
    }
    case 'check_publications': {
      const p = input('check_publications', payload);
      const results: Array<{ supported: boolean; problem: string | null; error?: string; errorCode?: string }> = [];
      // One check failing (a consumer not loaded here) says so in its own answer: the others stand.
      for (const check of p.checks) {
        try {
          const consumer = catalog.consumer(check.consumer);
          if (!consumer.checkPublication) results.push({ supported: false, problem: null });
          else results.push({ supported: true, problem: (await consumer.checkPublication(check.server, machineAttachment(catalog, check.attachment))) ?? null });
        } catch (error) {
          const failure = toBerthError(error);
          results.push({ supported: false, problem: null, error: failure.message, errorCode: failure.code });
        }
      }
      return { results };
    }
    case 'connector': {
      const p = input('connector', payload);
      return { connector: await mergeConnector(host.baseConnector(), catalog.transports(), p, logger) };
    }
    case 'host_facts': {
      const p = input('host_facts', payload);
      const unchecked: ReconcileUnchecked[] = [];
      const listings = await listTransports(catalog, catalog.transportNames(), unchecked, { readOnly: p.readOnly ?? false });
      return { listings, unchecked };
    }
  }
}

/** `attachment` with its recorded device as the machine sees it (what its consumer compares links with). */
function machineAttachment(catalog: DriverCatalog, attachment: Attachment): Attachment {
  if (attachment.device === null) return attachment;
  const device = catalog.machineDevice(attachment.transport, attachment.device);
  return device === attachment.device ? attachment : { ...attachment, device };
}
