import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { BerthError } from '@berth/core';
import { parsePortal, portalKey, samePortal, type PortalAddress } from './portal-address.js';
import type { LoginAuth, LoginRequest, LoginResult, LunDisk, LunInquiry, TargetAccess, TargetSession } from './target-access.js';
import { tgtLunIdentity } from './tgt-identity.js';

/** CHAP credentials of a target account. */
export interface ChapAccount {
  username: string;
  password: string;
}

/** One LUN of a modelled target. */
export interface ModelLunSpec {
  sizeBytes: number;
  /** The disk file (made sparse when missing); default `<workDir>/tid<T>-lun<L>.img`. */
  file?: string;
  /** tgtadm's `scsi_id`/`scsi_sn` overrides (the wwid follows `scsi_id`). */
  scsiId?: string;
  scsiSerial?: string;
}

/** A target of the modelled SAN, as a test describes it. */
export interface ModelTargetSpec {
  iqn: string;
  /** tgtadm's target number (the identity scheme uses it); default the next free from 1. */
  tid?: number;
  /** Portals it answers on, `host:port` (IPv6 in brackets). */
  portals: string[];
  /** Target portal group tag sent at login and in SendTargets (tgtd: 1). */
  tpgt?: number;
  /** Disk LUNs by number (LUN 0 is always the controller and cannot be a disk). */
  luns?: Record<number, ModelLunSpec>;
  /** Incoming CHAP: the initiator must log in with these. */
  chap?: ChapAccount;
  /** Outgoing CHAP (mutual): what the target answers with. */
  mutualChap?: ChapAccount;
  /** Initiator IQNs allowed; absent means every initiator (`ALL`). */
  acl?: string[];
}

/** A LUN of the model as it is now. */
export interface ModelLunInfo {
  lun: number;
  sizeBytes: number;
  file: string;
  wwid: string;
}

/** A target of the model as it is now (no secrets). */
export interface ModelTargetInfo {
  iqn: string;
  tid: number;
  tpgt: number;
  portals: string[];
  luns: ModelLunInfo[];
  chap: boolean;
  mutualChap: boolean;
  acl?: string[];
}

interface ModelLun {
  lun: number;
  sizeBytes: number;
  file: string;
  scsiId?: string;
  scsiSerial?: string;
}

interface ModelTarget {
  iqn: string;
  tid: number;
  tpgt: number;
  portals: PortalAddress[];
  luns: Map<number, ModelLun>;
  chap?: ChapAccount;
  mutualChap?: ChapAccount;
  acl?: string[];
}

/** Options of `ModelTargetAccess`. */
export interface ModelTargetAccessOptions {
  /** Where LUN files are made (a directory the caller owns). */
  workDir: string;
}

/** The SAN a test configures: targets, LUNs, CHAP, ACLs (tgtd's behaviour, no network). */
export interface ModelSan {
  /** Add a target (its LUN files are made sparse); returns what it looks like. */
  addTarget(spec: ModelTargetSpec): Promise<ModelTargetInfo>;
  /** Remove a target; live sessions go on, as with `tgtadm --op delete --force`. */
  removeTarget(iqn: string): Promise<void>;
  /** Set or clear the target's incoming CHAP account. */
  setChap(iqn: string, chap: ChapAccount | undefined): Promise<void>;
  /** Set or clear the target's outgoing (mutual) CHAP account. */
  setMutualChap(iqn: string, chap: ChapAccount | undefined): Promise<void>;
  /** Set the initiators allowed, or `undefined` for all. Live sessions stay (tgtd's way). */
  setAcl(iqn: string, acl: string[] | undefined): Promise<void>;
  /** Add a disk LUN. */
  addLun(iqn: string, lun: number, spec: ModelLunSpec): Promise<ModelLunInfo>;
  /** Remove a LUN (live sessions keep their devices until a rescan or delete). */
  removeLun(iqn: string, lun: number): Promise<void>;
  /** Grow a LUN's file; the kernel sees the new size after a rescan. */
  growLun(iqn: string, lun: number, sizeBytes: number): Promise<void>;
  /** Discovery CHAP the SendTargets session must use, or `undefined` for none. */
  setDiscoveryChap(chap: ChapAccount | undefined): Promise<void>;
  /** Every target as it is now. */
  targets(): Promise<ModelTargetInfo[]>;
}

/**
 * Pure simulation behind the simulated kernel: an in-memory SAN with tgtd's identity scheme,
 * whose disks are sparse files. Logins are decided by the model (unknown target or ACL → 19,
 * CHAP mismatch → 24, a portal nobody serves → 8).
 */
export class ModelTargetAccess implements TargetAccess, ModelSan {
  private readonly workDir: string;
  private readonly byIqn = new Map<string, ModelTarget>();
  private readonly sessions = new Set<ModelSession>();
  private discoveryChap: ChapAccount | undefined;

  constructor(options: ModelTargetAccessOptions) {
    this.workDir = options.workDir;
  }

  async addTarget(spec: ModelTargetSpec): Promise<ModelTargetInfo> {
    if (this.byIqn.has(spec.iqn)) throw new BerthError('CONFLICT', `the model SAN already has target ${spec.iqn}`);
    const tid = spec.tid ?? this.nextTid();
    if ([...this.byIqn.values()].some((t) => t.tid === tid)) throw new BerthError('CONFLICT', `the model SAN already has tid ${tid}`);
    if (spec.portals.length === 0) throw new BerthError('VALIDATION', `target ${spec.iqn} needs at least one portal`);
    const target: ModelTarget = {
      iqn: spec.iqn,
      tid,
      tpgt: spec.tpgt ?? 1,
      portals: spec.portals.map(parsePortal),
      luns: new Map(),
      ...(spec.chap ? { chap: { ...spec.chap } } : {}),
      ...(spec.mutualChap ? { mutualChap: { ...spec.mutualChap } } : {}),
      ...(spec.acl ? { acl: [...spec.acl] } : {}),
    };
    this.byIqn.set(spec.iqn, target);
    for (const [lun, lunSpec] of Object.entries(spec.luns ?? {})) await this.addLun(spec.iqn, Number(lun), lunSpec);
    return this.info(target);
  }

  async removeTarget(iqn: string): Promise<void> {
    this.byIqn.delete(iqn);
  }

  async setChap(iqn: string, chap: ChapAccount | undefined): Promise<void> {
    const t = this.target(iqn);
    if (chap) t.chap = { ...chap };
    else delete t.chap;
  }

  async setMutualChap(iqn: string, chap: ChapAccount | undefined): Promise<void> {
    const t = this.target(iqn);
    if (chap) t.mutualChap = { ...chap };
    else delete t.mutualChap;
  }

  async setAcl(iqn: string, acl: string[] | undefined): Promise<void> {
    const t = this.target(iqn);
    if (acl) t.acl = [...acl];
    else delete t.acl;
  }

  async addLun(iqn: string, lun: number, spec: ModelLunSpec): Promise<ModelLunInfo> {
    const t = this.target(iqn);
    if (!Number.isInteger(lun) || lun < 1 || lun > 16383) {
      throw new BerthError('VALIDATION', `LUN ${lun} of ${iqn}: disk LUNs are 1 to 16383 (LUN 0 is the controller)`);
    }
    if (t.luns.has(lun)) throw new BerthError('CONFLICT', `target ${iqn} already has LUN ${lun}`);
    if (!Number.isSafeInteger(spec.sizeBytes) || spec.sizeBytes <= 0 || spec.sizeBytes % 512 !== 0) {
      throw new BerthError('VALIDATION', `LUN ${lun} of ${iqn}: sizeBytes must be a positive multiple of 512`);
    }
    const file = spec.file ?? path.join(this.workDir, `tid${t.tid}-lun${lun}.img`);
    await fsp.mkdir(path.dirname(file), { recursive: true });
    const handle = await fsp.open(file, 'a');
    try {
      const st = await handle.stat();
      if (st.size < spec.sizeBytes) await handle.truncate(spec.sizeBytes);
    } finally {
      await handle.close();
    }
    const entry: ModelLun = {
      lun,
      sizeBytes: spec.sizeBytes,
      file,
      ...(spec.scsiId === undefined ? {} : { scsiId: spec.scsiId }),
      ...(spec.scsiSerial === undefined ? {} : { scsiSerial: spec.scsiSerial }),
    };
    t.luns.set(lun, entry);
    return this.lunInfo(t, entry);
  }

  async removeLun(iqn: string, lun: number): Promise<void> {
    this.target(iqn).luns.delete(lun);
  }

  async growLun(iqn: string, lun: number, sizeBytes: number): Promise<void> {
    const entry = this.target(iqn).luns.get(lun);
    if (!entry) throw new BerthError('NOT_FOUND', `target ${iqn} has no LUN ${lun}`);
    if (sizeBytes < entry.sizeBytes || sizeBytes % 512 !== 0) {
      throw new BerthError('VALIDATION', `LUN ${lun} of ${iqn}: the new size must be a multiple of 512 and not smaller`);
    }
    await fsp.truncate(entry.file, sizeBytes);
    entry.sizeBytes = sizeBytes;
  }

  async setDiscoveryChap(chap: ChapAccount | undefined): Promise<void> {
    this.discoveryChap = chap ? { ...chap } : undefined;
  }

  async targets(): Promise<ModelTargetInfo[]> {
    return [...this.byIqn.values()].sort((a, b) => a.tid - b.tid).map((t) => this.info(t));
  }

  async login(request: LoginRequest): Promise<{ result: LoginResult; session?: TargetSession }> {
    const portal = parsePortal(request.portal);
    const serving = [...this.byIqn.values()].filter((t) => t.portals.some((p) => samePortal(p, portal)));
    if (serving.length === 0) return { result: { ok: false, exitCode: 8, message: 'connection timed out' } };
    const target = serving.find((t) => t.iqn === request.iqn);
    // tgtd answers 02/03 (not found) for an unknown target and for an ACL refusal alike.
    if (!target || !allowed(target, request.initiator)) {
      return { result: { ok: false, exitCode: 19, message: 'encountered non-retryable iSCSI login failure' } };
    }
    const auth = checkChap(target.chap, target.mutualChap, request.auth);
    if (!auth) return { result: { ok: false, exitCode: 24, message: 'iSCSI login failed due to authorization failure' } };
    const session = new ModelSession(this, target.iqn, portalKey(portal), request.initiator);
    this.sessions.add(session);
    return { result: { ok: true, tpgt: target.tpgt }, session };
  }

  async discover(
    portal: string,
    initiator: string,
    auth?: LoginAuth,
  ): Promise<{ ok: true; targets: Array<{ portal: string; tpgt: number; iqn: string }> } | { ok: false; exitCode: number; message: string }> {
    const p = parsePortal(portal);
    const serving = [...this.byIqn.values()].filter((t) => t.portals.some((q) => samePortal(q, p)));
    if (serving.length === 0) return { ok: false, exitCode: 11, message: 'iSCSI PDU timed out' };
    if (!checkChap(this.discoveryChap, undefined, auth)) {
      return { ok: false, exitCode: 24, message: 'iSCSI login failed due to authorization failure' };
    }
    // tgtd lists the portal the discovery session came in on, with tag 1, for each allowed target.
    const targets = serving
      .filter((t) => allowed(t, initiator))
      .sort((a, b) => a.tid - b.tid)
      .map((t) => ({ portal: portalKey(p), tpgt: t.tpgt, iqn: t.iqn }));
    return { ok: true, targets };
  }

  async close(): Promise<void> {
    await Promise.all([...this.sessions].map((s) => s.logout()));
  }

  /** @internal the LUN numbers (with the controller) a session of `iqn` reports now. */
  reportLunsOf(iqn: string): number[] {
    const t = this.byIqn.get(iqn);
    return t ? [0, ...[...t.luns.keys()].sort((a, b) => a - b)] : [];
  }

  /** @internal the disk of LUN `lun` of `iqn`, or undefined. */
  diskOf(iqn: string, lun: number): LunDisk | undefined {
    const t = this.byIqn.get(iqn);
    const entry = t?.luns.get(lun);
    if (!t || !entry) return undefined;
    return new ModelDisk(t.tid, entry);
  }

  /** @internal INQUIRY of a non-disk LUN (the controller). */
  inquiryOf(iqn: string, lun: number): LunInquiry | undefined {
    const t = this.byIqn.get(iqn);
    if (!t || lun !== 0) return undefined;
    const id = tgtLunIdentity(t.tid, 0);
    return { type: id.type, vendor: id.vendor, model: id.model, rev: id.rev, wwid: id.wwid, vpdPg83: id.vpdPg83, vpdPg80: id.vpdPg80 };
  }

  /** @internal */
  forget(session: ModelSession): void {
    this.sessions.delete(session);
  }

  private target(iqn: string): ModelTarget {
    const t = this.byIqn.get(iqn);
    if (!t) throw new BerthError('NOT_FOUND', `the model SAN has no target ${iqn}`);
    return t;
  }

  private nextTid(): number {
    const used = new Set([...this.byIqn.values()].map((t) => t.tid));
    let tid = 1;
    while (used.has(tid)) tid++;
    return tid;
  }

  private lunInfo(t: ModelTarget, entry: ModelLun): ModelLunInfo {
    const id = tgtLunIdentity(t.tid, entry.lun, lunOverrides(entry));
    return { lun: entry.lun, sizeBytes: entry.sizeBytes, file: entry.file, wwid: id.wwid };
  }

  private info(t: ModelTarget): ModelTargetInfo {
    return {
      iqn: t.iqn,
      tid: t.tid,
      tpgt: t.tpgt,
      portals: t.portals.map(portalKey),
      luns: [...t.luns.values()].sort((a, b) => a.lun - b.lun).map((l) => this.lunInfo(t, l)),
      chap: t.chap !== undefined,
      mutualChap: t.mutualChap !== undefined,
      ...(t.acl ? { acl: [...t.acl] } : {}),
    };
  }
}

function lunOverrides(entry: ModelLun): { scsiId?: string; scsiSerial?: string } {
  return {
    ...(entry.scsiId === undefined ? {} : { scsiId: entry.scsiId }),
    ...(entry.scsiSerial === undefined ? {} : { scsiSerial: entry.scsiSerial }),
  };
}

function allowed(target: ModelTarget, initiator: string): boolean {
  return target.acl === undefined || target.acl.includes(initiator) || target.acl.includes('ALL');
}

/**
 * CHAP as tgtd and open-iscsi settle it: a target with an incoming account needs the initiator's
 * matching credentials; an initiator asking for mutual CHAP needs the target's outgoing account
 * to match. A target without accounts lets anyone in (tgtd offers `None`).
 */
function checkChap(incoming: ChapAccount | undefined, outgoing: ChapAccount | undefined, auth: LoginAuth | undefined): boolean {
  if (incoming) {
    if (!auth || auth.username !== incoming.username || auth.password !== incoming.password) return false;
  }
  if (auth?.usernameIn !== undefined && auth.usernameIn !== '') {
    if (!outgoing || outgoing.username !== auth.usernameIn || outgoing.password !== auth.passwordIn) return false;
  }
  return true;
}

class ModelSession implements TargetSession {
  private readonly disks = new Set<LunDisk>();

  constructor(
    private readonly owner: ModelTargetAccess,
    readonly iqn: string,
    readonly portal: string,
    readonly initiator: string,
  ) {}

  async reportLuns(): Promise<number[]> {
    return this.owner.reportLunsOf(this.iqn);
  }

  async openLun(lun: number): Promise<LunDisk | undefined> {
    const disk = this.owner.diskOf(this.iqn, lun);
    if (disk) this.disks.add(disk);
    return disk;
  }

  async inquiry(lun: number): Promise<LunInquiry | undefined> {
    return this.owner.inquiryOf(this.iqn, lun);
  }

  async logout(): Promise<void> {
    await Promise.all([...this.disks].map((d) => d.close()));
    this.disks.clear();
    this.owner.forget(this);
  }
}

class ModelDisk implements LunDisk {
  readonly backingPath: string;
  readonly isBlockDevice = false;
  sizeBytes: number;
  readonly vendor: string;
  readonly model: string;
  readonly rev: string;
  readonly wwid: string;
  readonly vpdPg83: Buffer;
  readonly vpdPg80: Buffer;

  constructor(tid: number, entry: ModelLun) {
    const id = tgtLunIdentity(tid, entry.lun, lunOverrides(entry));
    this.backingPath = entry.file;
    this.sizeBytes = entry.sizeBytes;
    this.vendor = id.vendor;
    this.model = id.model;
    this.rev = id.rev;
    this.wwid = id.wwid;
    this.vpdPg83 = id.vpdPg83;
    this.vpdPg80 = id.vpdPg80;
  }

  async refresh(): Promise<void> {
    try {
      this.sizeBytes = (await fsp.stat(this.backingPath)).size;
    } catch {
      // The LUN's file is gone (LUN deleted on the target): the kernel keeps the last size.
    }
  }

  async close(): Promise<void> {}
}
