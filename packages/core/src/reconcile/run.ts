import { sameDevice } from '../device-identity.js';
import { BerthError, toBerthError } from '../errors.js';
import type { HostStepCall } from '../host-steps/host-steps.js';
import type { Host, Operation } from '../model.js';
import { summarize } from '../pipeline/operation-runner.js';
import type { ReconcileDifference, ReconcileOptions, ReconcileReport, ReconcileUnchecked } from '../reports.js';
import { busyVolumeIds, readExports, readGuests, readListings, readMissingStorage, readPublications, readShortStorage } from './facts.js';
import { describeFinding, findDifferences, findStatusMismatches, type Finding } from './findings.js';
import { fixOf, Skip, type ReconcileDeps } from './fixes.js';

/**
 * `berth reconcile`: compare the store with what each backend exports and what each transport has
 * connected on the reconciled host (`options.host`, default this one), list every difference with
 * its fix, and (unless `dryRun`) apply the fixes, each under the volume's lock after checking
 * again that it is still needed, each journalled as a step of one `reconcile` operation. The
 * host's devices are read, and the fixes that touch the host run, through its host-step executor,
 * as the pipelines do: in-process for this host, its `berth agent` for another (whose work items
 * belong to the operation, so a reconcile of such a host is journalled even when dry). It never
 * touches a device whose source is not a berth volume, nor an export of a volume this store does
 * not know.
 */
export async function runReconcile(deps: ReconcileDeps, options: ReconcileOptions = {}): Promise<ReconcileReport> {
  const dryRun = options.dryRun ?? false;
  const { store, catalog, logger } = deps;
  const unchecked: ReconcileUnchecked[] = [];
  const host = await reconciledHost(deps, options.host);
  const steps = await deps.hostSteps(host.id);

  let operation: Operation | undefined;
  const journalled = async (): Promise<Operation> =>
    (operation ??= await store.operations.create({
      kind: 'reconcile',
      hostId: host.id,
      owner: deps.owner,
      deadlineAt: new Date(Date.now() + deps.config.operationTimeoutMs).toISOString(),
    }));
  // A remote host's steps are work items of an operation: it exists before the first one.
  if (steps.kind === 'remote') await journalled();
  const call = (): HostStepCall => ({ ...(operation ? { operationId: operation.id } : {}), signal: AbortSignal.timeout(deps.config.operationTimeoutMs) });

  let findings: Finding[];
  try {
    // Host facts first, the store second: something made after the listing is never acted on, and
    // whatever was listed either has its record by the time the store is read or is really orphaned.
    const knownBackends = new Set(catalog.backendNames());
    const usedBackends = [...new Set((await store.volumes.list()).map((v) => v.backend))].filter((b) => knownBackends.has(b));
    const exports = await readExports(catalog, usedBackends, unchecked);
    // A dry run only looks: the transports change nothing while they list.
    const listing = { readOnly: dryRun };
    const listings = await readListings(steps, call(), unchecked, listing);
    // The guests are host facts too: read before the store, like the devices.
    const servers = await store.servers.list({ hostId: host.id });
    const guests = await readGuests(steps, call, host, servers, deps.config.consumer, unchecked);
    // The operations before the attachments: one that ends between the two reads is seen running
    // (its volume busy), never as an attachment left transitional by no operation — which the
    // stuck-attachment fix would force-detach, healthy as it is by then (a review).
    const busy = await busyVolumeIds(store);
    const operations = (await store.operations.list({ state: ['succeeded', 'rolled_back', 'failed'] })).filter((o) => o.kind === 'attach' || o.kind === 'detach');
    const volumes = await store.volumes.list();
    const attachments = await store.attachments.list();
    const devices = await store.devices.list({ hostId: host.id });
    // Read after the attachments (the names they should have): one detached meanwhile is found
    // busy or gone again by its fix, under the volume lock, before anything is published.
    const publications = await readPublications(steps, call(), host, servers, attachments, deps.config.consumer, unchecked);
    // A detach that ran between the store's reading and the check removed the links as it should:
    // only attachments still attached at the same device count (rare: read one by one).
    for (const id of [...publications.keys()]) {
      const before = attachments.find((a) => a.id === id);
      const now = await store.attachments.get(id);
      if (now?.status !== 'attached' || !now.device || !before?.device || !sameDevice(now.device, before.device)) publications.delete(id);
    }
    const listingsAfter = await readListings(steps, call(), undefined, listing);
    // Available volumes only: an attached one's device may still hold its data (the attachment
    // findings say so), and one being created or deleted is its operation's.
    const missingStorage = await readMissingStorage(catalog, volumes.filter((v) => v.status === 'available' && knownBackends.has(v.backend)), unchecked);
    // Read again: a volume deleted meanwhile (a delete is not an operation: not in the busy set)
    // is gone, not lost (a review). Rare: one read per reported volume.
    for (const id of [...missingStorage]) {
      const now = await store.volumes.get(id).catch(() => undefined);
      if (now?.status !== 'available') missingStorage.delete(id);
    }
    // Attached volumes too: a file cut short under a loop device reads zeros past the cut. Read
    // again as above: a volume deleted meanwhile is gone, not short.
    const shortStorage = await readShortStorage(catalog, volumes.filter((v) => (v.status === 'available' || v.status === 'in-use') && knownBackends.has(v.backend)), unchecked);
    for (const id of [...shortStorage.keys()]) {
      const now = await store.volumes.get(id).catch(() => undefined);
      if (now?.status !== 'available' && now?.status !== 'in-use') shortStorage.delete(id);
    }
    // Where this berth's transports run (this host only: an agent's roots are its own).
    const transportRoots = steps.kind === 'local' ? transportRootsOf(catalog) : undefined;
    findings = findDifferences({
      localHostId: host.id,
      volumes,
      attachments,
      busyVolumeIds: busy,
      exports,
      listings,
      listingsAfter,
      devices,
      operations,
      ...(transportRoots ? { transportRoots } : {}),
      guests,
      publications,
      missingStorage,
      shortStorage,
    });
  } catch (error) {
    const failure = toBerthError(error);
    if (operation) await store.operations.finish(operation.id, { state: 'failed', error: summarize(failure) }).catch(() => undefined);
    throw failure;
  }

  if (dryRun) {
    const differences = findings.map(describeFinding);
    const counts = countOf(differences);
    if (operation) await store.operations.finish(operation.id, { state: 'succeeded', result: { dryRun: true, ...counts } });
    return { dryRun, operationId: operation?.id ?? null, differences, unchecked, counts };
  }

  const journal = async (name: string, data: Record<string, unknown>, fix: (operationId: string) => Promise<string>): Promise<string> => {
    const { id } = await journalled();
    const seq = await store.operations.startStep(id, name, 'do');
    try {
      const result = await fix(id);
      await store.operations.endStep(id, seq, { state: 'done', data: { ...data, result } });
      return result;
    } catch (error) {
      const skipped = error instanceof Skip;
      const failure = skipped ? undefined : toBerthError(error);
      await store.operations.endStep(id, seq, {
        state: skipped ? 'done' : 'failed',
        data: { ...data, ...(skipped ? { skipped: error.reason } : {}) },
        ...(failure ? { error: summarize(failure) } : {}),
      });
      throw error;
    }
  };

  const differences: ReconcileDifference[] = [];
  const apply = async (finding: Finding): Promise<void> => {
    const difference = describeFinding(finding);
    differences.push(difference);
    if (finding.skip !== undefined || difference.fix === 'none') return;
    const volumeId = difference.volumeId!;
    try {
      difference.result = await deps.withVolumeLock(volumeId, () =>
        journal(stepNameOf(difference), { kind: difference.kind, resource: difference.resource, volumeId, attachmentId: difference.attachmentId }, (operationId) =>
          fixOf(deps, finding, { host, steps, operationId }),
        ),
      );
      difference.state = 'applied';
    } catch (error) {
      if (error instanceof Skip) {
        difference.state = 'skipped';
        difference.result = error.reason;
        return;
      }
      const failure = toBerthError(error);
      difference.state = 'failed';
      difference.result = failure.message;
      difference.errorCode = failure.code;
      logger.warn({ kind: difference.kind, resource: difference.resource, code: failure.code, err: failure.message }, 'reconcile: a fix failed');
    }
  };

  for (const finding of findings) if (finding.kind !== 'volume_status_mismatch') await apply(finding);
  // Statuses last, read again: the fixes above recompute the volumes they touch.
  const after = findStatusMismatches(await store.volumes.list(), await store.attachments.list(), await busyVolumeIds(store));
  for (const finding of after) await apply(finding);

  const counts = countOf(differences);
  if (operation) {
    const failedFixes = differences.filter((d) => d.state === 'failed');
    await store.operations.finish(operation.id, {
      state: failedFixes.length > 0 ? 'failed' : 'succeeded',
      result: { ...counts },
      ...(failedFixes.length > 0
        ? {
            error: {
              code: failedFixes[0]!.errorCode ?? 'DRIVER_ERROR',
              message: `${failedFixes.length} of ${counts.applied + counts.failed} reconcile fix(es) failed: ${failedFixes.map((d) => d.result).join('; ')}`,
              hint: 'see `berth operation show` for each step; fix the cause and run `berth reconcile` again',
            },
          }
        : {}),
    });
    logger.info({ operationId: operation.id, ...counts }, 'reconcile finished');
  }
  return { dryRun, operationId: operation?.id ?? null, differences, unchecked, counts };
}

/** The journal step of a fix: its action, or `finish_detach` for a stuck or failed attachment. */
function stepNameOf(difference: ReconcileDifference): string {
  return difference.kind === 'attachment_stuck' || difference.kind === 'attachment_error' ? 'finish_detach' : difference.fix;
}

/** The host `name` (a name or an id) names, this host when none; NOT_FOUND saying how to list them. */
async function reconciledHost(deps: ReconcileDeps, name: string | undefined): Promise<Host> {
  if (name === undefined) return deps.localHost();
  const host = (await deps.store.hosts.findByName(name)) ?? (await deps.store.hosts.get(name).catch(() => undefined));
  if (!host) throw new BerthError('NOT_FOUND', `no host named ${name}`, { hint: 'see the hosts with `berth host list`', details: { host: name } });
  return host;
}

/** The host root each installed transport runs on in this berth. */
function transportRootsOf(catalog: ReconcileDeps['catalog']): Record<string, string> {
  const roots: Record<string, string> = {};
  for (const name of catalog.transportNames()) {
    const root = catalog.transportHostRoot(name);
    if (root !== undefined) roots[name] = root;
  }
  return roots;
}

function countOf(differences: readonly ReconcileDifference[]): ReconcileReport['counts'] {
  return {
    found: differences.length,
    applied: differences.filter((d) => d.state === 'applied').length,
    failed: differences.filter((d) => d.state === 'failed').length,
    skipped: differences.filter((d) => d.state === 'skipped').length,
  };
}

