import { access, mkdir, open, stat, truncate, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import {
  BerthError,
  parseWith,
  toBerthError,
  zConnector,
  zId,
  zSizeBytes,
  type BackendExport,
  type BackendVolume,
  type CheckResult,
  type ConnectionData,
  type ConnectionInfo,
  type CreatedVolume,
  type PluginContext,
  type VolumeBackend,
} from '@berth/core';
import { daemonStatus, errnoOf, isMissing } from '@berth/host';
import { newChapCredentials } from './chap-credentials.js';
import { BACKEND_DIR, ManagedTgtd, managedTgtdPaths } from './managed-tgtd.js';
import { tgtadmTargetParams, zTgtBackendOptions, type TgtBackendOptions } from './options.js';
import { allocateTid, readView, reconcileAll, reconcileVolume, repairOfflineLuns, secretsOf, sweepAccounts, VOLUME_LUN } from './reconcile.js';
import { TgtStateStore, type TgtState, type VolumeRecord } from './state-store.js';
import { NO_TARGET, Tgtadm } from './tgtadm.js';

/** The backend's registered name. */
export const NAME = 'tgt';

/** The `driver_volume_type` of its connections. */
export const DRIVER_VOLUME_TYPE = 'iscsi';

const LUN_SUFFIX = '.img';

/** The target IQN of a volume. */
export function volumeIqn(iqnPrefix: string, volumeId: string): string {
  return `${iqnPrefix}:volume-${volumeId}`;
}

/**
 * Volumes as file-backed LUNs exported by tgtd: one target per volume (`<iqnPrefix>:volume-<id>`),
 * LUN 1 on a sparse file, per-volume CHAP, one ACL entry per attached initiator. Its state
 * (`<dataDir>/backend-tgt/state.json`) is the truth tgtd is made to match: berth's own tgtd is
 * started on first use and re-created from it after a crash or a reboot.
 */
export function createTgtBackend(context: PluginContext<Partial<TgtBackendOptions>>): VolumeBackend {
  const options = parseWith(zTgtBackendOptions, context.options ?? {}, 'tgt backend options');
  const dir = path.join(context.dataDir, BACKEND_DIR);
  const lunDirectory = path.resolve(context.dataDir, options.lunDirectory ?? path.join(BACKEND_DIR, 'luns'));
  if (/[,\x00-\x1f]/.test(lunDirectory)) {
    // tgtadm sends `path=<file>` inside a comma-separated request: a comma would cut it short.
    throw new BerthError('VALIDATION', `the tgt backend's LUN directory ${JSON.stringify(lunDirectory)} holds a comma or a control character`, {
      hint: 'choose a lunDirectory (or data directory) whose path has no comma',
    });
  }
  const logger = context.logger.child({ backend: NAME });
  const faults = context.faults;
  const { logFile, stoppedFile } = managedTgtdPaths(context.dataDir);
  const tgtadm = new Tgtadm({
    runner: context.host.runner,
    controlPort: options.controlPort,
    logHint: options.manageDaemon
      ? `the reason is in tgtd's log, ${logFile}`
      : "the reason is in tgtd's log (its stderr, or `journalctl -u tgt`)",
    noDaemonHint: options.manageDaemon
      ? `berth starts its tgtd again on the next call; if it keeps failing, see ${logFile}`
      : `start tgtd (\`systemctl start tgt\`), or check the tgt backend's controlPort (${options.controlPort})`,
    targetParams: tgtadmTargetParams(options.sessionParams),
  });
  const store = new TgtStateStore(dir);
  const daemon = options.manageDaemon
    ? new ManagedTgtd({ dataDir: context.dataDir, tgtadm, portals: options.portals, startTimeoutMs: options.startTimeoutMs, logger })
    : undefined;
  // This process has brought tgtd in line with the state once (repairs drift on the first call).
  let reconciled = false;
  // The system tgtd's missing targets (iqns) upkeep last tried to restore.
  let restoreTried = '';

  /** The volume's id, proven to be a UUID (it names files and targets). */
  function idOf(volume: BackendVolume): string {
    return parseWith(zId, volume.id, 'volume id');
  }

  function lunFileOf(id: string): string {
    const file = path.resolve(lunDirectory, `${id}${LUN_SUFFIX}`);
    // A UUID holds no separator; the check keeps that true if the id rule ever loosens.
    if (path.dirname(file) !== lunDirectory) throw new BerthError('VALIDATION', `volume ${id} would be stored outside ${lunDirectory}`);
    return file;
  }

  /**
   * Run `work` under the state lock after making sure tgtd runs and holds what the state says:
   * berth's tgtd is started (and every export restored) when it is not running; the first call of
   * this process reconciles everything once. Errors become BerthErrors.
   */
  function withTgtd<T>(signal: AbortSignal, work: (state: TgtState) => Promise<T>): Promise<T> {
    return tgtdRun(signal, work, {}) as Promise<T>;
  }

  /** `withTgtd`; with `unlessStopped` nothing is started or run while tgtd is marked stopped on purpose (undefined then). */
  async function tgtdRun<T>(signal: AbortSignal, work: (state: TgtState) => Promise<T>, options: { unlessStopped?: boolean }): Promise<T | undefined> {
    throwIfAborted(signal);
    try {
      return await store.transaction(signal, async (state) => {
        // Upkeep's restore: a stop on purpose marked under this lock (or before it) holds.
        if (options.unlessStopped === true && (await exists(stoppedFile))) return undefined;
        const started = daemon ? (await daemon.ensureRunning(signal)) === 'started' : false;
        if (started || !reconciled) {
          // Berth's own tgtd holds only this data dir's accounts: those no record names are leftovers.
          const failures = await reconcileAll(tgtadm, state, logger, signal, { sweepAccounts: daemon !== undefined });
          if (started) {
            logger.info({ volumes: Object.keys(state.volumes).length, failed: failures.length }, 'exports restored on the new tgtd');
          }
          reconciled = true;
        }
        return work(state);
      });
    } catch (error) {
      const berthError = toBerthError(error, 'BACKEND_ERROR');
      // tgtd may have died under the call: make the next call ask it again, not trust the pid file.
      if (berthError.code === 'BACKEND_ERROR' || berthError.code === 'TIMEOUT') daemon?.forget();
      throw berthError;
    }
  }

  function recordOf(state: TgtState, id: string): VolumeRecord {
    const record = state.volumes[id];
    if (!record) {
      throw new BerthError('NOT_FOUND', `volume ${id} is not on the tgt backend`, {
        hint: 'create it first (berth volume create --backend tgt), or check the data directory',
        details: { volumeId: id },
      });
    }
    return record;
  }

  /**
   * Run `action` on the volume's target, addressed by its recorded tid — once tgtd shows that tid
   * holding the volume's IQN. A tgtd restarted behind this process (one berth does not manage: the
   * system's, or another data dir's) numbers its targets anew, and a tid-addressed `tgtadm` call would
   * then bind an initiator into, or re-point the LUN of, another target. Otherwise (and when tgtd
   * says the target is gone meanwhile) the volume's export is reconciled first: found at its new tid
   * by IQN, or re-created.
   */
  async function withTarget<T>(state: TgtState, id: string, signal: AbortSignal, action: (record: VolumeRecord) => Promise<T>): Promise<T> {
    const record = recordOf(state, id);
    const targets = await tgtadm.showTargets(signal);
    if (!targets.some((t) => t.tid === record.tid && t.iqn === record.iqn)) {
      const holder = targets.find((t) => t.tid === record.tid)?.iqn;
      logger.warn({ volumeId: id, iqn: record.iqn, tid: record.tid, ...(holder === undefined ? {} : { holder }) }, 'tgtd does not hold the volume\'s target at its recorded tid; reconciling it first');
      await reconcileVolume(tgtadm, state, id, record, { targets, accounts: await tgtadm.showAccounts(signal) }, logger, signal);
    }
    try {
      return await action(record);
    } catch (error) {
      if (!(BerthError.is(error) && NO_TARGET.test(String(error.details.tgtadm ?? '')))) throw error;
      logger.warn({ volumeId: id, iqn: record.iqn }, 'the target was gone from tgtd; re-creating it');
      await reconcileVolume(tgtadm, state, id, record, await readView(tgtadm, signal), logger, signal);
      return action(record);
    }
  }

  function connectionInfo(id: string, record: VolumeRecord): ConnectionInfo {
    const advertised = options.advertise === 'all' ? options.portals : options.portals.slice(0, 1);
    const [first] = advertised;
    const data: ConnectionData = {
      target_portal: first,
      target_iqn: record.iqn,
      target_lun: VOLUME_LUN,
      ...(advertised.length > 1
        ? {
            target_portals: [...advertised],
            target_iqns: advertised.map(() => record.iqn),
            target_luns: advertised.map(() => VOLUME_LUN),
          }
        : {}),
      target_discovered: false,
      ...authData(record),
      volume_id: id,
      access_mode: 'rw',
    };
    return { driver_volume_type: DRIVER_VOLUME_TYPE, data };
  }

  async function createLunFile(file: string, sizeBytes: number, id: string): Promise<'created' | 'existing'> {
    await mkdir(lunDirectory, { recursive: true, mode: 0o700 });
    let handle: FileHandle;
    try {
      handle = await open(file, 'wx', 0o600);
    } catch (error) {
      if (errnoOf(error) !== 'EEXIST') throw fsError(error, `cannot create ${file}`);
      const existing = await stat(file);
      if (existing.size !== sizeBytes) {
        throw new BerthError('CONFLICT', `the LUN file ${file} already exists with ${existing.size} bytes, not ${sizeBytes}`, {
          hint: 'delete the volume (or the file) first, or create it with the size it has',
          details: { volumeId: id, existingBytes: existing.size, requestedBytes: sizeBytes },
        });
      }
      return 'existing';
    }
    try {
      // ftruncate sets the length without writing blocks: the file stays sparse.
      await handle.truncate(sizeBytes);
    } catch (error) {
      await handle.close().catch(() => undefined);
      await unlink(file).catch(() => undefined);
      throw fsError(error, `cannot size ${file} to ${sizeBytes} bytes`);
    }
    await handle.close();
    return 'created';
  }

  /** Tell tgtd the LUN's file grew: offline, then re-open the same path (tgtd reads the size at open). */
  async function refreshLunSize(record: VolumeRecord, signal: AbortSignal): Promise<void> {
    const call = { signal, secrets: secretsOf(record) };
    await tgtadm.updateLun(record.tid, VOLUME_LUN, 'online=0', call);
    try {
      // tgtd refuses a new path while the LU is online; the path update puts it back online.
      await tgtadm.updateLun(record.tid, VOLUME_LUN, `path=${record.file}`, call);
    } catch (error) {
      await tgtadm.updateLun(record.tid, VOLUME_LUN, 'online=1', call).catch(() => undefined);
      throw error;
    }
  }

  return {
    name: NAME,

    async create(volume, signal): Promise<CreatedVolume> {
      const id = idOf(volume);
      const sizeBytes = parseWith(zSizeBytes, volume.sizeBytes, 'volume size');
      const file = lunFileOf(id);
      return withTgtd(signal, async (state) => {
        const existing = state.volumes[id];
        if (existing) {
          if (existing.sizeBytes !== sizeBytes) {
            throw new BerthError('CONFLICT', `volume ${id} already exists on the tgt backend with ${existing.sizeBytes} bytes, not ${sizeBytes}`, {
              hint: 'delete it first, or create it with the size it has',
              details: { volumeId: id, existingBytes: existing.sizeBytes, requestedBytes: sizeBytes },
            });
          }
          await reconcileVolume(tgtadm, state, id, existing, await readView(tgtadm, signal), logger, signal);
          return { providerLocation: existing.iqn };
        }
        const made = await createLunFile(file, sizeBytes, id);
        // The account names are new random ones: only the targets need reading (for the tid).
        const view = { targets: await tgtadm.showTargets(signal), accounts: [] };
        const iqn = volumeIqn(options.iqnPrefix, id);
        if (view.targets.some((t) => t.iqn === iqn)) {
          // Left by a create that crashed before recording it: remove it and start clean.
          await tgtadm.deleteTarget(view.targets.find((t) => t.iqn === iqn)?.tid ?? 0, false, { signal });
          view.targets = view.targets.filter((t) => t.iqn !== iqn);
        }
        const record: VolumeRecord = {
          tid: allocateTid(state, view),
          iqn,
          file,
          sizeBytes,
          ...(options.chap ? { chap: newChapCredentials('berth-') } : {}),
          ...(options.mutualChap ? { mutualChap: newChapCredentials('berth-t-') } : {}),
          initiators: [],
          createdAt: new Date().toISOString(),
          scsiId: volumeScsiId(id),
        };
        state.volumes[id] = record;
        try {
          await reconcileVolume(tgtadm, state, id, record, view, logger, signal);
          await faults?.hit('tgt.create.after-target');
        } catch (error) {
          // Undo what this create made, so a failed create leaves nothing behind.
          delete state.volumes[id];
          await removeExport(record, false).catch(() => undefined);
          if (made === 'created') await unlink(file).catch(() => undefined);
          throw error;
        }
        logger.info({ volumeId: id, tid: record.tid, iqn, file, sizeBytes, chap: options.chap, mutualChap: options.mutualChap }, 'volume created');
        return { providerLocation: iqn };
      });
    },

    async delete(volume, signal): Promise<void> {
      const id = idOf(volume);
      const defaultFile = lunFileOf(id);
      await withTgtd(signal, async (state) => {
        const record = state.volumes[id];
        const iqn = record?.iqn ?? volumeIqn(options.iqnPrefix, id);
        const target = (await tgtadm.showTargets(signal)).find((t) => t.iqn === iqn);
        if (target && target.nexuses.length > 0) {
          const initiators = [...new Set(target.nexuses.map((n) => n.initiator))];
          throw new BerthError('CONFLICT', `volume ${id} still has ${target.nexuses.length} iSCSI session(s), from ${initiators.join(', ')}`, {
            hint: 'detach it first (berth detach); a stale session ends when its host logs out',
            details: { volumeId: id, initiators },
          });
        }
        if (target) await tgtadm.deleteTarget(target.tid, false, { signal });
        if (record) await removeExport(record, true, signal);
        else if (target) {
          // A target no record knows (a create that crashed before recording it): its accounts are berth's too.
          for (const account of target.accounts) {
            if (account.user.startsWith('berth-')) await tgtadm.deleteAccount(account.user, { signal });
          }
        }
        const file = record?.file ?? defaultFile;
        try {
          await unlink(file);
        } catch (error) {
          if (errnoOf(error) !== 'ENOENT') throw fsError(error, `cannot delete ${file}`);
        }
        delete state.volumes[id];
        if (record || target) logger.info({ volumeId: id, iqn, file }, 'volume deleted');
      });
    },

    async extend(volume, newSizeBytes, signal): Promise<void> {
      const id = idOf(volume);
      const target = parseWith(zSizeBytes, newSizeBytes, 'new size');
      await withTgtd(signal, async (state) => {
        const record = recordOf(state, id);
        const current = (await stat(record.file).catch(() => undefined))?.size ?? record.sizeBytes;
        if (target < current || target < record.sizeBytes) {
          throw new BerthError('VALIDATION', `cannot shrink volume ${id} from ${Math.max(current, record.sizeBytes)} to ${target} bytes`, {
            hint: 'a volume can only grow; give a size larger than the current one',
            details: { volumeId: id, currentBytes: current, requestedBytes: target },
          });
        }
        if (target === current && target === record.sizeBytes) {
          // A retry after a crash between the grow and the refresh: refresh only if tgtd lags.
          const lun = (await tgtadm.showTargets(signal)).find((t) => t.iqn === record.iqn)?.luns.find((l) => l.lun === VOLUME_LUN);
          if (lun && lun.sizeMb !== Math.round(target / 1e6)) await refreshLunSize(record, signal);
          return;
        }
        try {
          await truncate(record.file, target);
        } catch (error) {
          throw fsError(error, `cannot grow ${record.file} to ${target} bytes`);
        }
        record.sizeBytes = target;
        await withTarget(state, id, signal, (r) => refreshLunSize(r, signal));
        logger.info({ volumeId: id, fromBytes: current, toBytes: target }, 'volume extended');
      });
    },

    async initializeConnection(volume, connector, signal): Promise<ConnectionInfo> {
      const id = idOf(volume);
      const initiator = initiatorOf(parseWith(zConnector, connector, 'connector'), id, true);
      return withTgtd(signal, async (state) => {
        return withTarget(state, id, signal, async (record) => {
          await tgtadm.bindInitiator(record.tid, initiator, { signal, secrets: secretsOf(record) });
          await faults?.hit('tgt.initialize.after-acl');
          // Recorded after tgtd granted it: a failed grant must not come back at the next restore.
          if (!record.initiators.includes(initiator)) record.initiators.push(initiator);
          logger.info({ volumeId: id, tid: record.tid, initiator }, 'initiator allowed');
          return connectionInfo(id, record);
        });
      });
    },

    async terminateConnection(volume, connector, signal): Promise<void> {
      const id = idOf(volume);
      const initiator = initiatorOf(parseWith(zConnector, connector, 'connector'), id, false);
      // Only initiator names are bound, so a connector without one has nothing to remove.
      if (initiator === undefined) return;
      await withTgtd(signal, async (state) => {
        const record = state.volumes[id];
        if (!record) return;
        // Found by its IQN, not trusted at the recorded tid: a tgtd restarted behind this process
        // may hold another target there (see withTarget). No target: no ACL left to remove.
        const target = (await tgtadm.showTargets(signal)).find((t) => t.iqn === record.iqn);
        if (target) {
          if (target.tid !== record.tid) {
            logger.warn({ volumeId: id, iqn: record.iqn, recordedTid: record.tid, tid: target.tid }, 'the target has another tid than recorded; recording it');
            record.tid = target.tid;
          }
          await tgtadm.unbindInitiator(target.tid, initiator, { signal, secrets: secretsOf(record) });
        }
        // Dropped once tgtd let it go: a failed unbind keeps it, for the next terminate or restore.
        record.initiators = record.initiators.filter((i) => i !== initiator);
        logger.info({ volumeId: id, tid: record.tid, initiator }, 'initiator removed');
      });
    },

    async credentials(volume): Promise<Record<string, string>> {
      const id = idOf(volume);
      const state = await store.read();
      return authData(recordOf(state, id));
    },

    async exports(): Promise<BackendExport[]> {
      return withTgtd(AbortSignal.timeout(60_000), async (state) => {
        // `berth reconcile` asks this: LUNs a killed CLI left offline come back and leaked accounts
        // go here too, not only on a process's first call (a long-running `berth serve` or agent
        // never repaired them). The rest of the backend's reconcile (unlisted ACLs removed) is not
        // run again: the exports it would remove are the drift this answer reports.
        const view = await readView(tgtadm);
        await repairOfflineLuns(tgtadm, state, view, logger);
        if (daemon) await sweepAccounts(tgtadm, state, view, logger);
        const prefix = `${options.iqnPrefix}:volume-`;
        const out: BackendExport[] = [];
        for (const target of view.targets) {
          if (!target.iqn.startsWith(prefix)) continue;
          const volumeId = target.iqn.slice(prefix.length);
          if (!zId.safeParse(volumeId).success) continue;
          for (const acl of target.acls) out.push({ volumeId, initiator: acl });
        }
        return out;
      });
    },

    /**
     * Volumes with no record in the state file, or whose LUN file is gone (deleted behind berth).
     * Reads the state without its lock and touches no tgtd: a file that cannot be looked at is not
     * called gone.
     */
    async missingStorage(volumes, signal): Promise<string[]> {
      const state = await store.read();
      const missing: string[] = [];
      for (const volume of volumes) {
        throwIfAborted(signal);
        const record = state.volumes[idOf(volume)];
        if (record === undefined) {
          missing.push(volume.id);
          continue;
        }
        if (await stat(record.file).then(() => false, isMissing)) missing.push(volume.id);
      }
      return missing;
    },

    /**
     * Volumes whose LUN file is there but smaller than the volume (cut short behind berth: tgtd
     * serves what the file has, a host reads zeros or errors past it). Reads as `missingStorage`
     * does; a volume without a record or a file is not short.
     */
    async shortStorage(volumes, signal): Promise<Array<{ id: string; sizeBytes: number }>> {
      const state = await store.read();
      const short: Array<{ id: string; sizeBytes: number }> = [];
      for (const volume of volumes) {
        throwIfAborted(signal);
        const record = state.volumes[idOf(volume)];
        if (record === undefined) continue;
        const size = await stat(record.file).then(
          (s) => (s.isFile() ? s.size : undefined),
          () => undefined,
        );
        if (size !== undefined && size < volume.sizeBytes) short.push({ id: volume.id, sizeBytes: size });
      }
      return short;
    },

    /**
     * `berth serve`'s upkeep: berth's own tgtd, when it died (crash, OOM, `kill -9`) or is not
     * running after a reboot while volumes exist, is started again and every export restored —
     * what the next call would do, done before the hosts' sessions reach their recovery timeout
     * (then their queued I/O completes instead of failing). A pid-file check when all is well; a
     * data dir without volumes starts nothing, nor does a tgtd stopped on purpose (`berth backend
     * stop tgt` marks it; the next tgt operation starts it). A system tgtd (`manageDaemon: false`)
     * is not ours to restart, but the targets berth made on it are ours: one `tgtadm` a round
     * lists its targets, and one that lost some (systemd restarted it; tgtd keeps nothing on disk)
     * gets them back as the next call would.
     */
    async upkeep(signal: AbortSignal): Promise<void> {
      if (!daemon) {
        const records = Object.values((await store.read()).volumes);
        if (records.length === 0) return;
        const listed = new Set((await tgtadm.showTargets(signal)).map((t) => t.iqn));
        const missing = records.filter((r) => !listed.has(r.iqn)).map((r) => r.iqn).sort().join(' ');
        if (missing === '') {
          restoreTried = '';
          return;
        }
        // Tried for these very targets already (one that cannot be made again — its LUN file gone —
        // would otherwise cost a full reconcile and two log lines every round): again when the set
        // changes, or at the next call.
        if (missing === restoreTried) return;
        restoreTried = missing;
        logger.warn({ missing: missing.split(' ').length }, 'the system tgtd lost targets of berth volumes (restarted?); restoring them');
        // The next call's full reconcile, now: it re-reads the state under the lock.
        reconciled = false;
        await withTgtd(signal, () => Promise.resolve());
        return;
      }
      if (await daemon.runsAsVerified()) return;
      // Stopped on purpose (`berth backend stop tgt`): left so until a tgt operation starts it.
      if (await exists(stoppedFile)) return;
      const state = await store.read();
      if (Object.keys(state.volumes).length === 0) return;
      // The mark is looked at again under the state lock, which `stopManagedTgtd` takes too: a stop
      // racing this restore either comes first (nothing is started) or stops the tgtd it started.
      await tgtdRun(signal, () => Promise.resolve(), { unlessStopped: true });
    },

    async close(): Promise<void> {
      // tgtd stays up on purpose: attached hosts keep their sessions. `stopManagedTgtd` stops it.
      daemon?.forget();
      reconciled = false;
    },

    async check(): Promise<CheckResult> {
      return checkTgt();
    },
  };

  /** Remove a volume's accounts (and, when asked, its target); tolerant of what is already gone. */
  async function removeExport(record: VolumeRecord, targetGone: boolean, signal?: AbortSignal): Promise<void> {
    const call = { secrets: secretsOf(record), ...(signal ? { signal } : {}) };
    if (!targetGone) await tgtadm.deleteTarget(record.tid, true, call).catch(() => undefined);
    for (const credentials of [record.chap, record.mutualChap]) {
      if (credentials) await tgtadm.deleteAccount(credentials.username, call);
    }
  }

  async function checkTgt(): Promise<CheckResult> {
    const checks: NonNullable<CheckResult['checks']> = [];
    const version = await context.host.runner.run('tgtadm', ['--version'], { reject: false, timeoutMs: 5_000 });
    if (version.notFound) {
      checks.push({ name: 'tgtadm installed', ok: false, detail: 'not found' });
      return { ok: false, summary: 'tgt backend: tgt is not installed', checks, fix: 'apt-get install -y tgt' };
    }
    checks.push({ name: 'tgtadm installed', ok: true, detail: version.stdout.trim() });
    try {
      await store.ensureDir();
      checks.push({ name: 'state directory', ok: true, detail: dir });
    } catch (error) {
      checks.push({ name: 'state directory', ok: false, detail: (error as Error).message });
      return { ok: false, summary: `tgt backend: cannot create ${dir}`, checks, fix: `make ${dir} writable by the user berth runs as` };
    }
    if (daemon) {
      const tgtd = await context.host.runner.run('tgtd', ['--version'], { reject: false, timeoutMs: 5_000 });
      if (tgtd.notFound) {
        checks.push({ name: 'tgtd installed', ok: false });
        return { ok: false, summary: 'tgt backend: tgtd is not installed', checks, fix: 'apt-get install -y tgt' };
      }
      checks.push({ name: 'tgtd installed', ok: true });
      const status = await daemonStatus(daemon.pidFile);
      if (!status.running) {
        checks.push({ name: 'tgtd running', ok: true, detail: 'not running; berth starts it on first use' });
        return { ok: true, summary: `tgt backend: berth's tgtd (control port ${options.controlPort}) starts on first use`, checks };
      }
      checks.push({ name: 'tgtd running', ok: true, detail: `pid ${status.pid}` });
    }
    if (!(await tgtadm.answers().catch(() => false))) {
      checks.push({ name: 'tgtd answers', ok: false, detail: `control port ${options.controlPort}` });
      return {
        ok: false,
        summary: `tgt backend: no tgtd answers on control port ${options.controlPort}`,
        checks,
        fix: daemon ? `see ${logFile}` : 'start tgtd (`systemctl start tgt`), or set the tgt backend\'s controlPort to the one it uses',
      };
    }
    checks.push({ name: 'tgtd answers', ok: true, detail: `control port ${options.controlPort}` });
    const listening = await tgtadm.showPortals().catch(() => [] as string[]);
    const missing = options.portals.filter((p) => !listening.includes(p));
    checks.push({ name: 'portals', ok: missing.length === 0, detail: `listening on ${listening.join(', ') || 'nothing'}` });
    if (missing.length > 0) {
      return {
        ok: false,
        summary: `tgt backend: tgtd does not listen on ${missing.join(', ')}`,
        checks,
        fix: daemon ? `berth adds missing portals on its next call; if that fails see ${logFile}` : 'add the portals to tgtd (tgtadm --op new --mode portal) or change the portals option',
      };
    }
    return { ok: true, summary: `tgt backend: tgtd on control port ${options.controlPort}, portals ${options.portals.join(', ')}`, checks };
  }
}

/** connection_info's auth keys for a volume (os-brick's names; `_in` for mutual CHAP). */
function authData(record: VolumeRecord): Record<string, string> {
  if (!record.chap) return {};
  return {
    auth_method: 'CHAP',
    auth_username: record.chap.username,
    auth_password: record.chap.password,
    ...(record.mutualChap ? { auth_username_in: record.mutualChap.username, auth_password_in: record.mutualChap.password } : {}),
  };
}

function initiatorOf(connector: { initiator?: string | undefined; host: string }, id: string, required: true): string;
function initiatorOf(connector: { initiator?: string | undefined; host: string }, id: string, required: false): string | undefined;
function initiatorOf(connector: { initiator?: string | undefined; host: string }, id: string, required: boolean): string | undefined {
  const initiator = connector.initiator;
  if (initiator === undefined || initiator === '') {
    if (!required) return undefined;
    throw new BerthError('UNPROCESSABLE', `volume ${id} is exported over iSCSI, but the connector of host ${connector.host} has no initiator name`, {
      hint: 'install open-iscsi on that host (it sets /etc/iscsi/initiatorname.iscsi) and attach again; `berth connector` shows what the host reports',
      details: { volumeId: id, host: connector.host },
    });
  }
  if (!/^(iqn|eui|naa)\.[A-Za-z0-9.:_-]+$/.test(initiator) || initiator.length > 223) {
    throw new BerthError('VALIDATION', `the connector's initiator name ${JSON.stringify(initiator.slice(0, 80))} is not an iSCSI name`, {
      hint: 'an initiator name looks like iqn.2004-10.com.ubuntu:01:abcdef (letters, digits, ".", ":", "-")',
      details: { volumeId: id },
    });
  }
  return initiator;
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw toBerthError(signal.reason ?? new DOMException('aborted', 'AbortError'), 'CANCELLED');
}

function fsError(error: unknown, what: string): BerthError {
  if (BerthError.is(error)) return error;
  const code = errnoOf(error);
  const message = error instanceof Error ? error.message : String(error);
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new BerthError('PERMISSION_DENIED', `${what}: ${message}`, {
      hint: 'run berth as a user that may write the LUN directory, or change the lunDirectory option',
      cause: error,
    });
  }
  // A sparse LUN file takes no space: EFBIG is the file system's largest file (ext4: 16 TiB), as
  // the file backend says it (a bare `EFBIG` before).
  if (code === 'EFBIG' || code === 'ENOSPC') {
    return new BerthError('BACKEND_ERROR', `${what}: ${message}`, {
      hint:
        code === 'EFBIG'
          ? 'the file system that holds the LUN directory cannot hold a file this large (ext4: 16 TiB at most); use a smaller size or a lunDirectory on a file system that can (xfs)'
          : 'free space on the file system that holds the LUN directory, or use a smaller size',
      details: { reason: code === 'EFBIG' ? 'file-too-large' : 'no-space' },
      cause: error,
    });
  }
  return new BerthError('BACKEND_ERROR', `${what}: ${message}`, { cause: error });
}

/** A volume's own SCSI identity for tgtd (`VolumeRecord.scsiId`): its id's 32 hex digits. */
export function volumeScsiId(volumeId: string): string {
  return volumeId.replaceAll('-', '').toLowerCase();
}

/** Whether something is at `file`. */
function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}
