import { stat } from 'node:fs/promises';
import { BerthError, type Logger } from '@berth/core';
import type { TgtState, VolumeRecord } from './state-store.js';
import type { Tgtadm } from './tgtadm.js';
import type { TgtTarget } from './tgtadm-show-parser.js';

/** The LUN number of a volume on its target (LUN 0 is tgtd's controller). */
export const VOLUME_LUN = 1;

/** What tgtd holds now: its targets and its CHAP account names. */
export interface TgtdView {
  targets: TgtTarget[];
  accounts: string[];
}

/** Read tgtd's targets and accounts. */
export async function readView(tgtadm: Tgtadm, signal?: AbortSignal): Promise<TgtdView> {
  const [targets, accounts] = await Promise.all([tgtadm.showTargets(signal), tgtadm.showAccounts(signal)]);
  return { targets, accounts };
}

/** The smallest tid used neither in the state nor by any target of tgtd. */
export function allocateTid(state: TgtState, view: TgtdView): number {
  const used = new Set<number>([...Object.values(state.volumes).map((v) => v.tid), ...view.targets.map((t) => t.tid)]);
  let tid = 1;
  while (used.has(tid)) tid += 1;
  return tid;
}

/** The secrets of a record, for the runner's masking. */
export function secretsOf(record: VolumeRecord): string[] {
  return [record.chap?.password, record.mutualChap?.password].filter((s): s is string => s !== undefined);
}

/**
 * Make tgtd hold exactly what `record` says for one volume: the target (with the recorded tid
 * when it is free, so the LUN keeps its SCSI identity), LUN 1 on the recorded file, the CHAP
 * accounts bound in and out, and one ACL entry per recorded initiator (entries tgtd has beyond
 * those are removed). Idempotent; `view` is updated as things are made. Returns true when the
 * record changed (a new tid).
 */
export async function reconcileVolume(
  tgtadm: Tgtadm,
  state: TgtState,
  volumeId: string,
  record: VolumeRecord,
  view: TgtdView,
  logger: Logger,
  signal?: AbortSignal,
): Promise<boolean> {
  const secrets = secretsOf(record);
  const call = { secrets, ...(signal ? { signal } : {}) };
  let changed = false;
  let target = view.targets.find((t) => t.iqn === record.iqn);
  if (target && target.tid !== record.tid) {
    logger.warn({ volumeId, iqn: record.iqn, recordedTid: record.tid, tid: target.tid }, 'the target has another tid than recorded; recording it');
    record.tid = target.tid;
    changed = true;
  }
  if (!target) {
    if (view.targets.some((t) => t.tid === record.tid)) {
      const tid = allocateTid(state, view);
      // Another target (not berth's) took the tid while tgtd was down: the WWN of this LUN changes.
      logger.warn({ volumeId, iqn: record.iqn, recordedTid: record.tid, tid }, 'the recorded tid is taken; the target gets a new one');
      record.tid = tid;
      changed = true;
    }
    await tgtadm.newTarget(record.tid, record.iqn, call);
    target = { tid: record.tid, iqn: record.iqn, state: 'ready', nexuses: [], luns: [], accounts: [], acls: [] };
    view.targets.push(target);
  }
  const tid = target.tid;

  const lun = target.luns.find((l) => l.lun === VOLUME_LUN);
  if (lun && lun.backingStorePath !== record.file) {
    throw new BerthError('CONFLICT', `LUN ${VOLUME_LUN} of ${record.iqn} is backed by ${lun.backingStorePath ?? 'nothing'}, not ${record.file}`, {
      hint: 'someone changed the target outside berth; delete the LUN with tgtadm and retry',
      details: { volumeId, tid },
    });
  }
  if (lun && record.scsiId !== undefined && lun.scsiId !== undefined && lun.scsiId !== record.scsiId) {
    // Made, then cut short before its identity was set (a crash between the two calls): set now
    // while no session sees it; under a session the identity a host holds is not changed.
    if (target.nexuses.length === 0) {
      await tgtadm.updateLun(tid, VOLUME_LUN, `scsi_id=${record.scsiId}`, call);
      lun.scsiId = record.scsiId;
    } else {
      logger.warn({ volumeId, tid, scsiId: lun.scsiId }, 'the LUN has not got the volume\'s SCSI identity, and a session holds it: left as it is');
    }
  }
  if (lun && !lun.online && (await bringOnline(tgtadm, tid, lun, volumeId, record, logger, call))) changed = true;
  if (!lun) {
    const file = await stat(record.file).catch(() => undefined);
    if (!file?.isFile()) {
      throw new BerthError('NOT_FOUND', `the LUN file of volume ${volumeId} is missing: ${record.file}`, {
        hint: 'restore the file from a backup, or delete the volume',
        details: { volumeId, tid },
      });
    }
    await tgtadm.newLun(tid, VOLUME_LUN, record.file, call);
    // The volume's own identity, before any initiator is let in to see the default one.
    if (record.scsiId !== undefined) await tgtadm.updateLun(tid, VOLUME_LUN, `scsi_id=${record.scsiId}`, call);
    target.luns.push({ lun: VOLUME_LUN, type: 'disk', sizeMb: 0, backingStoreType: 'rdwr', backingStorePath: record.file, online: true, ...(record.scsiId === undefined ? {} : { scsiId: record.scsiId }) });
  }

  for (const [credentials, outgoing] of [
    [record.chap, false],
    [record.mutualChap, true],
  ] as const) {
    if (!credentials) continue;
    if (!view.accounts.includes(credentials.username)) {
      await tgtadm.newAccount(credentials.username, credentials.password, call);
      view.accounts.push(credentials.username);
    }
    if (!target.accounts.some((a) => a.user === credentials.username && a.outgoing === outgoing)) {
      await tgtadm.bindAccount(tid, credentials.username, outgoing, call);
      target.accounts.push({ user: credentials.username, outgoing });
    }
  }
  for (const bound of [...target.accounts]) {
    const wanted = bound.outgoing ? record.mutualChap?.username : record.chap?.username;
    if (bound.user === wanted) continue;
    await tgtadm.unbindAccount(tid, bound.user, bound.outgoing, call);
    target.accounts = target.accounts.filter((a) => a !== bound);
  }

  for (const initiator of record.initiators) {
    if (target.acls.includes(initiator)) continue;
    await tgtadm.bindInitiator(tid, initiator, call);
    target.acls.push(initiator);
  }
  for (const entry of [...target.acls]) {
    if (record.initiators.includes(entry)) continue;
    // Only initiator names are berth's to remove; an address rule (`ALL`) was added by hand and
    // would open the target to everyone: it goes too, with a warning.
    if (!entry.includes(':')) logger.warn({ volumeId, tid, acl: entry }, 'removing an address ACL berth did not add');
    await unbindAcl(tgtadm, tid, entry, call);
    target.acls = target.acls.filter((a) => a !== entry);
  }
  return changed;
}

/**
 * A LUN left offline: an extend cut short between its `online=0` and the path update that reopens
 * the grown file (a killed CLI), which left every attach failing NOT READY. The path update reopens
 * the file at the size it has and puts the LUN back online. The file is never cut back: tgtd's
 * sizes are whole megabytes, so whether an initiator saw (and wrote) the grown part cannot be
 * told, and a grow that reached the file counts — the record takes the file's size, and the
 * volume's own record follows at the next `extend` to it (a retry is a no-op then).
 */
async function bringOnline(
  tgtadm: Tgtadm,
  tid: number,
  lun: TgtTarget['luns'][number],
  volumeId: string,
  record: VolumeRecord,
  logger: Logger,
  call: { secrets: string[]; signal?: AbortSignal },
): Promise<boolean> {
  const size = (await stat(record.file).catch(() => undefined))?.size;
  logger.warn({ volumeId, tid, fileBytes: size, recordedBytes: record.sizeBytes }, 'the LUN was offline (an extend cut short?): putting it back online at its file\'s size');
  await tgtadm.updateLun(tid, VOLUME_LUN, `path=${record.file}`, call);
  lun.online = true;
  if (size === undefined || size <= record.sizeBytes) return false;
  record.sizeBytes = size;
  return true;
}

async function unbindAcl(tgtadm: Tgtadm, tid: number, entry: string, call: { secrets: string[]; signal?: AbortSignal }): Promise<void> {
  if (entry.startsWith('iqn.') || entry.startsWith('eui.') || entry.startsWith('naa.')) {
    await tgtadm.unbindInitiator(tid, entry, call);
    return;
  }
  await tgtadm.call(`remove address ACL ${entry} from tid ${tid}`, ['--op', 'unbind', '--mode', 'target', '--tid', String(tid), '--initiator-address', entry], {
    ...call,
    alreadyDone: [/this access control rule does not exist/],
  });
}

/** Failure to restore one volume (the others are still restored). */
export interface RestoreFailure {
  volumeId: string;
  error: BerthError;
}

/**
 * Reconcile every recorded volume (after a tgtd start, or on this process's first call), in tid
 * order so recorded tids are taken back first. One broken volume does not stop the others.
 */
export async function reconcileAll(
  tgtadm: Tgtadm,
  state: TgtState,
  logger: Logger,
  signal?: AbortSignal,
  options: { sweepAccounts?: boolean } = {},
): Promise<RestoreFailure[]> {
  const view = await readView(tgtadm, signal);
  const failures: RestoreFailure[] = [];
  const entries = Object.entries(state.volumes).sort(([, a], [, b]) => a.tid - b.tid);
  for (const [volumeId, record] of entries) {
    try {
      await reconcileVolume(tgtadm, state, volumeId, record, view, logger, signal);
    } catch (error) {
      signal?.throwIfAborted();
      const berthError = BerthError.is(error) ? error : new BerthError('BACKEND_ERROR', String(error), { cause: error });
      failures.push({ volumeId, error: berthError });
      logger.error({ volumeId, code: berthError.code, error: berthError.message }, 'cannot restore the export of a volume');
    }
  }
  if (options.sweepAccounts === true) await sweepAccounts(tgtadm, state, view, logger, signal);
  return failures;
}

/**
 * Put back online every recorded volume's LUN left offline (`bringOnline`), and nothing else: what
 * `exports()` runs in a process that has made its first call already (a long-running `berth
 * serve`), where the rest of the reconcile — ACLs the state does not list removed — would hide
 * from `berth reconcile` the drift it is asked to report. A record it changes is saved with the state.
 */
export async function repairOfflineLuns(tgtadm: Tgtadm, state: TgtState, view: TgtdView, logger: Logger, signal?: AbortSignal): Promise<void> {
  for (const [volumeId, record] of Object.entries(state.volumes)) {
    const target = view.targets.find((t) => t.iqn === record.iqn);
    const lun = target?.luns.find((l) => l.lun === VOLUME_LUN);
    if (target === undefined || lun === undefined || lun.online) continue;
    await bringOnline(tgtadm, target.tid, lun, volumeId, record, logger, { secrets: secretsOf(record), ...(signal ? { signal } : {}) });
  }
}

/** The CHAP account names berth's creates make (`berth-<hex>`, `berth-t-<hex>` for mutual CHAP). */
const BERTH_ACCOUNT = /^berth-(t-)?[0-9a-f]+$/;

/**
 * Delete berth's CHAP accounts no volume record names and no target binds: a create killed between
 * making the account and binding it (two tgtadm calls) left one in tgtd for good, a secret nobody
 * could remove short of a tgtd restart. Only on berth's own tgtd (a shared one may hold another
 * data dir's), and under the state lock, so no create of this data dir is half-way.
 */
export async function sweepAccounts(tgtadm: Tgtadm, state: TgtState, view: TgtdView, logger: Logger, signal?: AbortSignal): Promise<void> {
  const named = new Set(Object.values(state.volumes).flatMap((r) => [r.chap?.username, r.mutualChap?.username]));
  const bound = new Set(view.targets.flatMap((t) => t.accounts.map((a) => a.user)));
  for (const account of [...view.accounts]) {
    if (!BERTH_ACCOUNT.test(account) || named.has(account) || bound.has(account)) continue;
    logger.warn({ account }, 'deleting a CHAP account no volume names (left by a create cut short)');
    try {
      await tgtadm.deleteAccount(account, signal ? { signal } : {});
      view.accounts = view.accounts.filter((a) => a !== account);
    } catch (error) {
      // Tidying, not the caller's work: the next process's first call tries again.
      signal?.throwIfAborted();
      logger.warn({ account, err: BerthError.is(error) ? error.message : String(error) }, 'could not delete a CHAP account no volume names');
    }
  }
}
