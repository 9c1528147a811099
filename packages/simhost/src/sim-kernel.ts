import { randomBytes } from 'node:crypto';
import { linkSync, mkdirSync, promises as fsp, realpathSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { CommandRunner } from '@berth/host';
import { FaultSet } from './faults.js';
import { FifoPool, splitScanWrites, type FifoHandle } from './fifo-pool.js';
import { kernelPeerAddress, portalKey, samePortal, type PortalAddress } from './portal-address.js';
import { byPathLunText, kernelLunOf, sdDevT, sdName, targetLunOf } from './sd-names.js';
import type { LoginAuth, LunDisk, TargetAccess, TargetSession } from './target-access.js';
import { removeEntry, removeTree } from './remove-tree.js';
import { idSerialOf, wwnLinkOf } from './tgt-identity.js';

/** What a login asks of the kernel (iscsid's view of a node record). */
export interface KernelLoginRequest {
  iqn: string;
  /** The record's portal: becomes the connection's persistent address and port. */
  portal: PortalAddress;
  iface: string;
  initiator: string;
  auth?: LoginAuth;
  /** `node.session.scan`: `auto` scans every LUN after login, `manual` nothing. */
  scan: 'auto' | 'manual';
  /** `node.session.timeo.replacement_timeout` (the session's recovery_tmo). */
  recoveryTmo: number;
  /** `node.conn[0].timeo.login_timeout`, s: how long one connect attempt may hang (default 30, a new record's). */
  loginTimeoutS?: number;
  /** `node.session.initial_login_retry_max`: iscsid gives up after this many timed-out attempts (default 4, a new record's). */
  loginRetryMax?: number;
  /** `node.conn[0].timeo.noop_out_interval`, s: how often the connection is pinged; 0 never (default 5). */
  noopOutIntervalS?: number;
  /** `node.conn[0].timeo.noop_out_timeout`, s: a ping not answered by then fails the connection (default 5). */
  noopOutTimeoutS?: number;
}

/** A LUN the kernel has for a session, for assertions. */
export interface SimLunState {
  /** Kernel LUN (16384 + n for target LUN n ≥ 256). */
  lun: number;
  targetLun: number;
  hctl: string;
  /** sd name when the LUN is a disk (`sdb`). */
  device?: string;
  /** Whether /dev/sdX and its udev links exist yet. */
  devicePresent: boolean;
  /** sdev state: `running`, `blocked`, `transport-offline`. */
  state: string;
  wwid?: string;
  sizeBytes?: number;
}

/** A session, for assertions. */
export interface SimSessionState {
  sid: number;
  host: number;
  iqn: string;
  /** `host:port` of the node record (persistent portal). */
  portal: string;
  tpgt: number;
  iface: string;
  initiator: string;
  /** `LOGGED_IN`, `FAILED` or `FREE`. */
  state: string;
  luns: SimLunState[];
}

/** How often iscsid logged in to one target through one portal (rc-15 "already present" not counted). */
export interface SimLoginCount {
  iqn: string;
  /** `host:port` of the node record. */
  portal: string;
  /** Logins that reached the target side (or an injected failure). */
  attempts: number;
  /** Logins that made a session. */
  succeeded: number;
}

/** Everything the kernel holds, for assertions. */
export interface SimKernelState {
  sessions: SimSessionState[];
  /** Every sd device with the session and LUN it belongs to. */
  devices: Array<{ name: string; hctl: string; sid: number; lun: number; present: boolean; backingPath: string }>;
  /** Login counters per target and portal, since the daemon started. */
  logins: SimLoginCount[];
  /** Scans parked by a `heldScans` fault, waiting for their release. */
  heldScans: number;
  /** Logins parked by a `heldLogins` fault, waiting for their release. */
  heldLogins: number;
}

/** A disk (sd) as device-mapper and multipathd see it. */
export interface SimDisk {
  /** `sdb` */
  name: string;
  hctl: string;
  sid: number;
  iqn: string;
  /** `host:port` of the session's node record. */
  portal: string;
  /** Kernel LUN. */
  lun: number;
  /** `MAJOR:MINOR` as `/sys/block/sdX/dev` says. */
  devT: string;
  /** The kernel's wwid (`naa.6…`), when the LUN has one. */
  wwid?: string;
  /** INQUIRY strings as sysfs pads them. */
  vendor: string;
  model: string;
  rev: string;
  /** Unit serial number (VPD page 0x80) without padding. */
  serial: string;
  sizeBytes: number;
  /** sdev state: `running`, `blocked`, `transport-offline`, … */
  state: string;
  /** Whether udev made `/dev/sdX` and its links. */
  devicePresent: boolean;
  /** Host path of the disk's sysfs directory (`/sys/devices/…/block/sdX`). */
  sysfsDir: string;
  /** What backs `/dev/sdX`. */
  backingPath: string;
  isBlockDevice: boolean;
}

/** What the kernel tells device-mapper and multipathd about its disks (their uevents). */
export interface DiskEvents {
  /** udev finished a new disk: `/dev/sdX` and its links exist. */
  diskAdded(name: string): void;
  /** A disk is going (delete, logout): device-mapper lets go of it before its sysfs goes. */
  diskRemoving(name: string): Promise<void>;
  /** The sdev state of these disks changed (connection lost, back, recovery timed out). */
  diskStateChanged(names: string[]): void;
}

/** Options of the kernel model. */
export interface SimKernelOptions {
  root: string;
  targetAccess: TargetAccess;
  runner: CommandRunner;
  /** Delay between the kernel making a device (sysfs) and udev making /dev/sdX (ms). */
  deviceDelayMs: number;
  faults?: FaultSet;
  /** The initiator's local address shown in `iscsi_host/hostH/ipaddress`. */
  localAddress?: string;
}

interface SimLun {
  klun: number;
  tlun: number;
  hctl: string;
  sdevDir: string;
  sd?: { index: number; name: string; devT: string; disk: LunDisk; sizeBytes: number };
  sg: number;
  state: string;
  wwid?: string;
  devicePresent: boolean;
  /** Whether devtmpfs made `/dev/sdX`. */
  nodePresent?: boolean;
  timer?: NodeJS.Timeout;
  fifos: FifoHandle[];
  byPath?: string;
  byId: string[];
  removed: boolean;
}

/** A scan parked by a `heldScans` fault. */
interface HeldScan {
  session: SimSession;
  tlun: number;
  settle: 'sysfs' | 'udev';
  release: () => void;
}

interface SimSession {
  sid: number;
  host: number;
  iqn: string;
  tpgt: number;
  portal: PortalAddress;
  iface: string;
  initiator: string;
  state: string;
  target: TargetSession;
  luns: Map<number, SimLun>;
  pending: Map<number, Promise<void>>;
  scanFifo?: FifoHandle;
  hostDir: string;
  sessionDir: string;
  removing: boolean;
  background: Set<Promise<unknown>>;
  /** Backings of deleted disks still being released (loop, FUSE export, QMP node); logout waits for them. */
  releases: Set<Promise<void>>;
  /** Stops the connection's pings and its recovery timer (see `watchConnection`). */
  stopWatch?: () => void;
}

/**
 * The kernel and udev of the simulated host: SCSI hosts, iSCSI sessions and connections, sd
 * devices and their sysfs tree (KERNEL-MODEL §3), `/dev/sdX` nodes and udev links (§4), made and
 * removed as a real host would on login, scan, delete and logout. All host paths it writes are
 * under `root`.
 */
export class SimKernel {
  readonly root: string;
  readonly faults: FaultSet;
  private readonly targetAccess: TargetAccess;
  private readonly runner: CommandRunner;
  private readonly deviceDelayMs: number;
  private readonly localAddress: string;
  private readonly fifos: FifoPool;
  private readonly sessions = new Map<number, SimSession>();
  private readonly hosts = new Map<number, number>();
  private readonly loginsInProgress = new Set<string>();
  private readonly sdUsed = new Set<number>();
  private readonly sgUsed = new Set<number>();
  private readonly byIdOwners = new Map<string, string[]>();
  /** by-id links a higher-priority device (a multipath map) holds: link name → device (`dm-0`). */
  private readonly byIdClaims = new Map<string, string>();
  private readonly loginCounts = new Map<string, SimLoginCount>();
  /** Write-only attributes (`scan`, `delete`, `rescan`) by their real path: what a write does, awaitable. */
  private readonly attributes = new Map<string, (text: string) => Promise<void>>();
  private realRoot: string | undefined;
  private events: DiskEvents | undefined;
  private readonly hostsReserved = new Set<number>();
  private readonly heldScans = new Set<HeldScan>();
  /** Releases of the logins a `heldLogins` fault parks, by login. */
  private readonly heldLogins = new Map<string, { portal: string; iqn: string; release: () => void }>();
  private nextSid = 1;
  private closed = false;
  private readonly stagingDir: string;

  constructor(options: SimKernelOptions) {
    this.root = path.resolve(options.root);
    this.targetAccess = options.targetAccess;
    this.runner = options.runner;
    this.deviceDelayMs = options.deviceDelayMs;
    this.faults = options.faults ?? new FaultSet();
    this.localAddress = options.localAddress ?? '127.0.0.1';
    this.fifos = new FifoPool(path.join(this.root, 'run/simhost/fifo-pool'), this.runner);
    this.stagingDir = path.join(this.root, 'run/simhost/staging');
    // A held scan whose fault is gone (cleared, reloaded) goes on.
    this.faults.onChange(() => this.releaseHeldScans((h) => this.faults.scanHeld(portalKey(h.session.portal), h.session.iqn, h.tlun) === undefined));
    // A held login whose fault is gone goes on.
    this.faults.onChange(() => {
      for (const held of [...this.heldLogins.values()]) if (this.faults.loginHeld(held.portal, held.iqn) === undefined) held.release();
    });
  }

  /** Lay out a freshly booted host: an empty sysfs with the iSCSI classes, an empty /dev. */
  async init(): Promise<void> {
    // A daemon restart is a reboot: no session survives it.
    rmSync(this.real('/sys'), { recursive: true, force: true });
    for (const dir of ['/dev/disk']) rmSync(this.real(dir), { recursive: true, force: true });
    for (const entry of await fsp.readdir(this.real('/dev')).catch(() => [] as string[])) {
      if (/^sd[a-z]+$/.test(entry)) rmSync(this.real(`/dev/${entry}`), { force: true });
    }
    rmSync(this.stagingDir, { recursive: true, force: true });
    const dirs = [
      '/sys/devices/platform',
      '/sys/devices/virtual/block',
      '/sys/class/scsi_host',
      '/sys/class/iscsi_host',
      '/sys/class/iscsi_session',
      '/sys/class/iscsi_connection',
      '/sys/class/scsi_device',
      '/sys/class/scsi_disk',
      '/sys/class/block',
      '/sys/block',
      '/sys/dev/block',
      '/sys/bus/scsi/devices',
      '/sys/bus/scsi/drivers/sd',
      '/sys/class/iscsi_transport/tcp',
      '/dev/disk/by-path',
      '/dev/disk/by-id',
      '/run/simhost/staging',
    ];
    for (const dir of dirs) mkdirSync(this.real(dir), { recursive: true });
    this.writeAttrs('/sys/class/iscsi_transport/tcp', { handle: '18446744072640751104', caps: '0x39' });
    this.fifos.prefill();
  }

  /** Log every session out and stop reading the sysfs write entries. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // A held login goes on, finds the kernel closed and ends.
    for (const held of [...this.heldLogins.values()]) held.release();
    await Promise.all([...this.sessions.values()].map((s) => this.logout(s.sid).catch(() => undefined)));
    await this.fifos.close();
    rmSync(this.stagingDir, { recursive: true, force: true });
  }

  /** The real path of a host path. */
  real(hostPath: string): string {
    return path.join(this.root, hostPath);
  }

  /** Sessions matching a record pattern (undefined fields match anything), in sysfs listing order. */
  findSessions(pattern: { iqn?: string; portal?: PortalAddress; iface?: string; sid?: number } = {}): SimSessionState[] {
    return this.sessionsSorted()
      .filter((s) => pattern.sid === undefined || s.sid === pattern.sid)
      .filter((s) => pattern.iqn === undefined || s.iqn === pattern.iqn)
      .filter((s) => pattern.portal === undefined || samePortal(s.portal, pattern.portal))
      .filter((s) => pattern.iface === undefined || s.iface === pattern.iface)
      .map((s) => this.sessionState(s));
  }

  /** The SCSI host number of `sid`, or undefined. */
  hostOf(sid: number): number | undefined {
    return this.sessions.get(sid)?.host;
  }

  /** Everything the kernel holds. */
  state(): SimKernelState {
    const sessions = this.sessionsSorted().map((s) => this.sessionState(s));
    const devices: SimKernelState['devices'] = [];
    for (const s of this.sessionsSorted()) {
      for (const l of [...s.luns.values()].sort((a, b) => a.klun - b.klun)) {
        if (l.sd) devices.push({ name: l.sd.name, hctl: l.hctl, sid: s.sid, lun: l.klun, present: l.devicePresent, backingPath: l.sd.disk.backingPath });
      }
    }
    const logins = [...this.loginCounts.values()].map((c) => ({ ...c })).sort((a, b) => (a.iqn === b.iqn ? (a.portal < b.portal ? -1 : 1) : a.iqn < b.iqn ? -1 : 1));
    return { sessions, devices, logins, heldScans: this.heldScans.size, heldLogins: this.heldLogins.size };
  }

  /** Who hears about disks coming, going and changing state (the device-mapper model). */
  setDiskEvents(events: DiskEvents | undefined): void {
    this.events = events;
  }

  /** A disk the kernel has now (not deleted), or undefined. */
  disk(name: string): SimDisk | undefined {
    for (const s of this.sessions.values()) {
      for (const l of s.luns.values()) {
        if (l.sd?.name === name && !l.removed) return this.diskOf(s, l);
      }
    }
    return undefined;
  }

  /** The sysfs directory of disk `name`, also while it is being removed. */
  diskSysfsDir(name: string): string | undefined {
    for (const s of this.sessions.values()) {
      for (const l of s.luns.values()) if (l.sd?.name === name) return `${l.sdevDir}/block/${name}`;
    }
    return undefined;
  }

  /** Every disk the kernel has now, in sysfs path order (how udev enumerates them). */
  disks(): SimDisk[] {
    const out: SimDisk[] = [];
    for (const s of this.sessions.values()) {
      for (const l of s.luns.values()) if (l.sd && !l.removed) out.push(this.diskOf(s, l));
    }
    return out.sort((a, b) => (a.sysfsDir < b.sysfsDir ? -1 : a.sysfsDir > b.sysfsDir ? 1 : 0));
  }

  /**
   * Point by-id links at a device with a higher udev link_priority (a multipath map holds its
   * paths' `scsi-…`/`wwn-…` links while it exists).
   */
  claimLinks(names: readonly string[], device: string): void {
    for (const name of names) {
      this.byIdClaims.set(name, device);
      this.atomicLink(`../../${device}`, `/dev/disk/by-id/${name}`);
    }
  }

  /** Give claimed by-id links back: they point at the newest disk that has them again, or go. */
  releaseLinks(names: readonly string[], device: string): void {
    for (const name of names) {
      if (this.byIdClaims.get(name) !== device) continue;
      this.byIdClaims.delete(name);
      const last = (this.byIdOwners.get(name) ?? []).at(-1);
      if (last === undefined) rmSync(this.real(`/dev/disk/by-id/${name}`), { force: true });
      else this.atomicLink(`../../${last}`, `/dev/disk/by-id/${name}`);
    }
  }

  private diskOf(s: SimSession, l: SimLun): SimDisk {
    const sd = l.sd!;
    const pg80 = sd.disk.vpdPg80;
    return {
      name: sd.name,
      hctl: l.hctl,
      sid: s.sid,
      iqn: s.iqn,
      portal: portalKey(s.portal),
      lun: l.klun,
      devT: sd.devT,
      ...(l.wwid ? { wwid: l.wwid } : {}),
      vendor: sd.disk.vendor,
      model: sd.disk.model,
      rev: sd.disk.rev,
      serial: pg80.length > 4 ? pg80.subarray(4).toString('latin1').trim() : '',
      sizeBytes: sd.sizeBytes,
      state: l.state,
      devicePresent: l.devicePresent,
      sysfsDir: `${l.sdevDir}/block/${sd.name}`,
      backingPath: sd.disk.backingPath,
      isBlockDevice: sd.disk.isBlockDevice,
    };
  }

  /** Resolve a device name (`sdb`) to what backs it, or undefined. */
  blockDevice(name: string): { disk: LunDisk; sizeBytes: number; sid: number; klun: number } | undefined {
    for (const s of this.sessions.values()) {
      for (const l of s.luns.values()) {
        if (l.sd?.name === name && !l.removed) return { disk: l.sd.disk, sizeBytes: l.sd.sizeBytes, sid: s.sid, klun: l.klun };
      }
    }
    return undefined;
  }

  /**
   * Log in as iscsid does: one session per record (a second gives 15), faults first, then the
   * target; on success a SCSI host and the session appear in sysfs. Returns the exit code.
   */
  async login(request: KernelLoginRequest): Promise<{ ok: true; sid: number } | { ok: false; exitCode: number }> {
    const key = `${request.iqn}|${portalKey(request.portal)}|${request.iface}`;
    const existing = [...this.sessions.values()].some(
      (s) => s.iqn === request.iqn && samePortal(s.portal, request.portal) && s.iface === request.iface,
    );
    if (existing || this.loginsInProgress.has(key)) return { ok: false, exitCode: 15 };
    this.loginsInProgress.add(key);
    const portal = portalKey(request.portal);
    const countKey = `${request.iqn}|${portal}`;
    const count = this.loginCounts.get(countKey) ?? { iqn: request.iqn, portal, attempts: 0, succeeded: 0 };
    this.loginCounts.set(countKey, count);
    count.attempts += 1;
    try {
      const attemptMs = this.faults.unreachable(portal);
      if (attemptMs !== undefined) {
        await sleep(unreachableLoginMs(attemptMs, request));
        return { ok: false, exitCode: 8 };
      }
      const injected = this.faults.takeLoginFailure(portal, request.iqn);
      if (injected !== undefined) return { ok: false, exitCode: injected };
      if ((await this.holdLogin(key, portal, request)) === 'timed-out') return { ok: false, exitCode: 8 };
      const { result, session } = await this.targetAccess.login({
        portal,
        iqn: request.iqn,
        initiator: request.initiator,
        ...(request.auth ? { auth: request.auth } : {}),
      });
      if (!result.ok || !session) return { ok: false, exitCode: result.ok ? 5 : result.exitCode };
      if (this.closed) {
        await session.logout();
        return { ok: false, exitCode: 4 };
      }
      const sid = await this.createSession(request, result.tpgt, session);
      count.succeeded += 1;
      if (request.scan === 'auto') {
        const s = this.sessions.get(sid);
        // iscsid scans after the login reply, in the background.
        if (s) this.track(s, this.scanSession(s, '-'));
      }
      return { ok: true, sid };
    } finally {
      this.loginsInProgress.delete(key);
    }
  }

  /**
   * Park a login a `heldLogins` fault matches until the fault goes (or its `holdMs`): iscsid's
   * side of it, so the `iscsiadm` that asked may be killed meanwhile and the login still ends. As
   * iscsid, it gives up once `initial_login_retry_max × login_timeout` has passed (`timed-out`).
   */
  private async holdLogin(key: string, portal: string, request: KernelLoginRequest): Promise<'released' | 'timed-out'> {
    const hold = this.closed ? undefined : this.faults.loginHeld(portal, request.iqn);
    if (hold === undefined) return 'released';
    const outcome = await new Promise<'released' | 'timed-out'>((resolve) => {
      const end = (how: 'released' | 'timed-out'): void => {
        clearTimeout(held);
        clearTimeout(bound);
        this.heldLogins.delete(key);
        resolve(how);
      };
      const held = hold.holdMs === undefined ? undefined : setTimeout(() => end('released'), hold.holdMs);
      const bound = setTimeout(() => end('timed-out'), unreachableLoginMs(Number.POSITIVE_INFINITY, request));
      this.heldLogins.set(key, { portal, iqn: request.iqn, release: () => end('released') });
    });
    return outcome;
  }

  /** Log a session out: its devices, target, connection, session and SCSI host go. */
  async logout(sid: number): Promise<boolean> {
    const s = this.sessions.get(sid);
    if (!s || s.removing) return false;
    s.removing = true;
    s.stopWatch?.();
    // A parked scan must go on (and find the session going) or the logout waits on it forever.
    this.releaseHeldScans((h) => h.session === s);
    await Promise.allSettled([...s.background]);
    await Promise.allSettled([...s.pending.values()]);
    await Promise.all([...s.luns.values()].map((l) => this.removeLun(s, l)));
    await Promise.allSettled([...s.releases]);
    s.scanFifo?.close();
    for (const link of [`/sys/class/scsi_host/host${s.host}`, `/sys/class/iscsi_host/host${s.host}`, `/sys/class/iscsi_session/session${sid}`, `/sys/class/iscsi_connection/connection${sid}:0`]) {
      rmSync(this.real(link), { force: true });
    }
    rmSync(this.real(s.hostDir), { recursive: true, force: true });
    this.sessions.delete(sid);
    this.hosts.delete(s.host);
    await s.target.logout().catch(() => undefined);
    return true;
  }

  /**
   * `iscsiadm --rescan` of a session: each device re-reads its size, then the host is scanned
   * for new LUNs (`- - -`).
   */
  async rescanSession(sid: number): Promise<void> {
    const s = this.sessions.get(sid);
    if (!s) return;
    await Promise.all([...s.luns.values()].map((l) => this.rescanLun(l)));
    await this.scanSession(s, '-');
  }

  /**
   * The kernel's watch over a session's connection, for targets that can be pinged (a real tgtd):
   * a ping every `noop_out_interval`, failed when not answered within `noop_out_timeout`. A failed
   * ping loses the connection (FAILED, devices blocked: their I/O waits); an answer before
   * recovery_tmo brings it back; recovery_tmo passing expires it (FREE, devices transport-offline)
   * and the target fails the disks' I/O, what waited included. As iscsid goes on reconnecting
   * after that, the watch goes on pinging an expired session, and the first answer revives it
   * (`TargetSession.revive`: the disks come back on their backing devices) — LOGGED_IN, connection
   * up, devices running: new I/O works, what failed meanwhile stays failed. A target without
   * `revive` stays expired until logout. A session lost or expired by a fault
   * (`faults.loseSession`) is the fault's: the watch only undoes what it did itself. Its steps run
   * one at a time, so an answer cannot revive a session whose expiry is still failing its I/O.
   */
  private watchConnection(s: SimSession, request: KernelLoginRequest): void {
    const ping = s.target.ping?.bind(s.target);
    const intervalMs = (request.noopOutIntervalS ?? 5) * 1000;
    if (ping === undefined || !(intervalMs > 0)) return;
    const timeoutMs = Math.max(1, request.noopOutTimeoutS ?? 5) * 1000;
    let stopped = false;
    let lostByWatch = false;
    let next: NodeJS.Timeout | undefined;
    let recovery: NodeJS.Timeout | undefined;
    let steps: Promise<void> = Promise.resolve();
    const step = (work: () => Promise<void>): Promise<void> => {
      const run = steps.then(work);
      steps = run.catch(() => undefined);
      return run;
    };
    const alive = (): boolean => !stopped && !s.removing && !this.closed && this.sessions.get(s.sid) === s;
    // Not tracked with the session's scans: a logout must not wait for a ping in flight.
    const report = (error: unknown): void => {
      console.error(`sim-kernel: session ${s.sid}: connection watch: ${error instanceof Error ? error.message : String(error)}`);
    };
    const expire = async (): Promise<void> => {
      if (!alive() || !lostByWatch || s.state !== 'FAILED') return;
      await this.expireSession(s.sid);
      await s.target.failIo?.();
      // Nothing can bring it back: stop pinging.
      if (s.target.revive === undefined) stopped = true;
    };
    const revive = async (): Promise<void> => {
      const back = await (s.target.revive?.() ?? Promise.resolve(false)).catch((error: unknown) => {
        report(error);
        return false;
      });
      if (!back || !alive() || s.state !== 'FREE') return;
      lostByWatch = false;
      await this.restoreSession(s.sid);
    };
    const tick = async (): Promise<void> => {
      const answered = await ping(timeoutMs).catch(() => false);
      if (!alive()) return;
      await step(async () => {
        if (!alive()) return;
        if (!answered && s.state === 'LOGGED_IN') {
          lostByWatch = true;
          await this.loseSession(s.sid);
          // A timer of an earlier loss (its session restored by a fault since) must not expire this one early.
          clearTimeout(recovery);
          if (request.recoveryTmo >= 0) {
            recovery = setTimeout(() => void step(expire).catch(report), request.recoveryTmo * 1000);
            recovery.unref();
          }
        } else if (answered && lostByWatch && s.state === 'FAILED') {
          lostByWatch = false;
          clearTimeout(recovery);
          await this.restoreSession(s.sid);
        } else if (answered && lostByWatch && s.state === 'FREE') {
          await revive();
        }
      });
      if (!alive()) return;
      next = setTimeout(() => void tick().catch(report), intervalMs);
      next.unref();
    };
    s.stopWatch = () => {
      stopped = true;
      clearTimeout(next);
      clearTimeout(recovery);
    };
    next = setTimeout(() => void tick().catch(report), intervalMs);
    next.unref();
  }

  /** Connection lost: session FAILED, its devices blocked (until `restoreSession`). */
  async loseSession(sid: number): Promise<void> {
    await this.setSessionState(sid, 'FAILED', 'failed', 'blocked');
  }

  /** The connection is back: session LOGGED_IN, devices running. */
  async restoreSession(sid: number): Promise<void> {
    await this.setSessionState(sid, 'LOGGED_IN', 'up', 'running');
  }

  /** recovery_tmo passed while the connection was down: session FREE, devices transport-offline. */
  async expireSession(sid: number): Promise<void> {
    await this.setSessionState(sid, 'FREE', 'failed', 'transport-offline');
  }

  private async setSessionState(sid: number, state: string, connState: string, sdevState: string): Promise<void> {
    const s = this.sessions.get(sid);
    if (!s) throw new Error(`no session ${sid}`);
    s.state = state;
    writeFileSync(this.real(`${s.sessionDir}/iscsi_session/session${sid}/state`), `${state}\n`);
    writeFileSync(this.real(`${s.sessionDir}/connection${sid}:0/iscsi_connection/connection${sid}:0/state`), `${connState}\n`);
    const names: string[] = [];
    for (const l of s.luns.values()) {
      l.state = sdevState;
      quietly(() => writeFileSync(this.real(`${l.sdevDir}/state`), `${sdevState}\n`));
      if (l.sd && !l.removed) names.push(l.sd.name);
    }
    if (names.length > 0) this.events?.diskStateChanged(names);
  }

  private sessionsSorted(): SimSession[] {
    // iscsiadm lists /sys/class/iscsi_session alphabetically: session10 before session2.
    return [...this.sessions.values()].sort((a, b) => (`session${a.sid}` < `session${b.sid}` ? -1 : 1));
  }

  private sessionState(s: SimSession): SimSessionState {
    return {
      sid: s.sid,
      host: s.host,
      iqn: s.iqn,
      portal: portalKey(s.portal),
      tpgt: s.tpgt,
      iface: s.iface,
      initiator: s.initiator,
      state: s.state,
      luns: [...s.luns.values()]
        .filter((l) => !l.removed)
        .sort((a, b) => a.klun - b.klun)
        .map((l) => ({
          lun: l.klun,
          targetLun: l.tlun,
          hctl: l.hctl,
          ...(l.sd ? { device: l.sd.name, sizeBytes: l.sd.sizeBytes } : {}),
          devicePresent: l.devicePresent,
          state: l.state,
          ...(l.wwid ? { wwid: l.wwid } : {}),
        })),
    };
  }

  private track(s: SimSession, work: Promise<unknown>): void {
    // A failed scan makes no device, as on a real host; like the kernel's log, the simulator's
    // says why (the detached daemon's stderr is <root>/run/simhost/kernel.log).
    const p = work.catch((error: unknown) => {
      console.error(`sim-kernel: session ${s.sid}: scan failed: ${error instanceof Error ? error.message : String(error)}`);
    });
    s.background.add(p);
    void p.finally(() => s.background.delete(p));
  }

  private lowestFree(used: { has(n: number): boolean }, extra?: { has(n: number): boolean }): number {
    let n = 0;
    while (used.has(n) || extra?.has(n)) n++;
    return n;
  }

  private async createSession(request: KernelLoginRequest, tpgt: number, target: TargetSession): Promise<number> {
    // Numbers are taken before the first await so concurrent logins never share one.
    const host = this.lowestFree(this.hosts, this.hostsReserved);
    this.hostsReserved.add(host);
    const sid = this.nextSid++;
    const hostDir = `/sys/devices/platform/host${host}`;
    const sessionDir = `${hostDir}/session${sid}`;
    const s: SimSession = {
      sid,
      host,
      iqn: request.iqn,
      tpgt,
      portal: request.portal,
      iface: request.iface,
      initiator: request.initiator,
      state: 'LOGGED_IN',
      target,
      luns: new Map(),
      pending: new Map(),
      hostDir,
      sessionDir,
      removing: false,
      background: new Set(),
      releases: new Set(),
    };
    try {
      const stage = this.stage();
      const sHost = `${stage}/host${host}`;
      const shost = `${sHost}/scsi_host/host${host}`;
      this.writeAttrs(shost, {
        proc_name: 'iscsi_tcp',
        state: 'running',
        unique_id: '0',
        host_busy: '0',
        can_queue: '128',
        cmd_per_lun: '128',
        sg_tablesize: '4096',
        active_mode: 'Initiator',
        supported_mode: 'Initiator',
      });
      this.link('../../../host' + host, `${shost}/device`, true);
      const ihost = `${sHost}/iscsi_host/host${host}`;
      this.writeAttrs(ihost, {
        ipaddress: this.localAddress,
        netdev: '(null)',
        hwaddress: '(null)',
        initiatorname: request.initiator,
        port_state: 'Unknown',
        port_speed: 'Unknown',
      });
      this.link('../../../host' + host, `${ihost}/device`, true);
      const isess = `${sHost}/session${sid}/iscsi_session/session${sid}`;
      const auth = request.auth;
      this.writeAttrs(isess, {
        targetname: request.iqn,
        tpgt: String(tpgt),
        state: 'LOGGED_IN',
        recovery_tmo: request.recoveryTmo < 0 ? 'off' : String(request.recoveryTmo),
        creator: String(process.pid),
        target_state: 'SCANNED',
        target_id: '0',
        ifacename: request.iface,
        initiatorname: request.initiator,
        targetalias: '(null)',
        username: auth?.username ?? '(null)',
        username_in: auth?.usernameIn || '(null)',
        abort_tmo: '15',
        lu_reset_tmo: '30',
        tgt_reset_tmo: '30',
        fast_abort: '1',
        initial_r2t: '0',
        immediate_data: '1',
        first_burst_len: '65536',
        max_burst_len: '262144',
        data_pdu_in_order: '1',
        data_seq_in_order: '1',
        erl: '0',
        max_outstanding_r2t: '1',
        tsid: String(sid),
        discovery_session: '0',
        boot_root: '(null)',
        boot_nic: '(null)',
        boot_target: '(null)',
        portal_type: '(null)',
        chap_in_idx: '65535',
        chap_out_idx: '65535',
      });
      // The kernel shows the session's secrets to root only.
      this.writeAttrs(isess, { password: auth?.password ?? '(null)', password_in: auth?.passwordIn || '(null)' }, 0o600);
      this.link(`../../../session${sid}`, `${isess}/device`, true);
      const iconn = `${sHost}/session${sid}/connection${sid}:0/iscsi_connection/connection${sid}:0`;
      this.writeAttrs(iconn, {
        persistent_address: request.portal.address,
        persistent_port: String(request.portal.port),
        address: kernelPeerAddress(request.portal.address),
        port: String(request.portal.port),
        state: 'up',
        header_digest: 'None',
        data_digest: 'None',
        max_recv_dlength: '262144',
        max_xmit_dlength: '8192',
        ifmarker: '0',
        ofmarker: '0',
        exp_statsn: '1',
        // The kernel's names for the record's noop_out_timeout and noop_out_interval.
        ping_tmo: String(request.noopOutTimeoutS ?? 5),
        recv_tmo: String(request.noopOutIntervalS ?? 5),
        local_port: String(40000 + sid),
        tcp_xmit_wsf: '0',
        tcp_recv_wsf: '0',
      });
      this.link(`../../../connection${sid}:0`, `${iconn}/device`, true);
      renameSync(this.real(sHost), this.real(hostDir));
      rmSync(this.real(stage), { recursive: true, force: true });
      const scan = `${hostDir}/scsi_host/host${host}/scan`;
      s.scanFifo = await this.attribute(s, scan, scan, (text) => this.scanWrites(s, text));
      this.hosts.set(host, sid);
      this.sessions.set(sid, s);
      this.link(`../../devices/platform/host${host}/scsi_host/host${host}`, `/sys/class/scsi_host/host${host}`);
      this.link(`../../devices/platform/host${host}/iscsi_host/host${host}`, `/sys/class/iscsi_host/host${host}`);
      this.link(`../../devices/platform/host${host}/session${sid}/iscsi_session/session${sid}`, `/sys/class/iscsi_session/session${sid}`);
      this.link(
        `../../devices/platform/host${host}/session${sid}/connection${sid}:0/iscsi_connection/connection${sid}:0`,
        `/sys/class/iscsi_connection/connection${sid}:0`,
      );
      this.watchConnection(s, request);
    } catch (error) {
      await target.logout().catch(() => undefined);
      throw error;
    } finally {
      this.hostsReserved.delete(host);
    }
    return sid;
  }

  /**
   * What writes to a host's `scan` do: each `C T L` scans the session (every field a number or
   * `-`); done when every scan is. Anything else is EINVAL, as in scsi_sysfs.c.
   */
  private async scanWrites(s: SimSession, text: string): Promise<void> {
    const scans: Array<Promise<void>> = [];
    let invalid = false;
    for (const write of splitScanWrites(text)) {
      const fields = write.split(' ');
      if (fields.length !== 3 || !fields.every((f) => f === '-' || /^\d+$/.test(f))) {
        invalid = true;
        continue;
      }
      const [c, t, l] = fields as [string, string, string];
      // Channel and target id are 0 for iscsi_tcp; a scan for anything else finds nothing.
      if ((c !== '-' && Number(c) !== 0) || (t !== '-' && Number(t) !== 0)) continue;
      scans.push(this.scanSession(s, l === '-' ? '-' : Number(l)));
    }
    await Promise.all(scans);
    if (invalid) throw Object.assign(new Error('Invalid argument'), { code: 'EINVAL' });
  }

  /**
   * A write-only sysfs attribute: a FIFO put at `stagedPath` (host path) that is at `finalPath`
   * once its directory moves in. A write to the FIFO runs `action` in the background (a FIFO
   * write returns at once); `writeAttribute` runs it and waits, as a real sysfs write does.
   */
  private async attribute(s: SimSession, stagedPath: string, finalPath: string, action: (text: string) => Promise<void>): Promise<FifoHandle> {
    const key = this.attributeKey(finalPath);
    this.attributes.set(key, action);
    const fifo = await this.fifos.place(this.real(stagedPath), (text) => this.track(s, action(text)));
    return {
      path: fifo.path,
      close: () => {
        this.attributes.delete(key);
        fifo.close();
      },
    };
  }

  private attributeKey(hostPath: string): string {
    this.realRoot ??= realpathSync(this.root);
    return path.join(this.realRoot, hostPath);
  }

  /**
   * Write to a write-only sysfs attribute (`scan`, `delete`, `rescan`; `realPath` resolved, as
   * `realpath` gives it) and return once the kernel has acted, as sysfs does: after a `delete`
   * the disk, its `/dev` node and its links are gone; after a `scan` the disks it found are in
   * sysfs and `/dev`. The fake `tee` (how os-brick writes them) comes here. False when
   * `realPath` is no such attribute; rejects with code EINVAL on a malformed `scan` write.
   */
  async writeAttribute(realPath: string, text: string): Promise<boolean> {
    const action = this.attributes.get(realPath);
    if (!action) return false;
    await action(text);
    return true;
  }

  private async scanSession(s: SimSession, lun: number | '-'): Promise<void> {
    if (s.removing || s.state !== 'LOGGED_IN') return;
    if (lun !== '-') {
      await this.scanLun(s, lun);
      return;
    }
    await this.scanLun(s, 0);
    const reported = await s.target.reportLuns();
    await Promise.all(reported.map((tl) => this.scanLun(s, kernelLunOf(tl))));
  }

  private async scanLun(s: SimSession, klun: number): Promise<void> {
    if (s.removing) return;
    const existing = s.luns.get(klun);
    if (existing && !existing.removed) return;
    const pending = s.pending.get(klun);
    if (pending) return pending;
    const work = this.addLun(s, klun).finally(() => s.pending.delete(klun));
    s.pending.set(klun, work);
    return work;
  }

  private async addLun(s: SimSession, klun: number): Promise<void> {
    const tlun = targetLunOf(klun);
    if (tlun === undefined) return;
    const reported = await s.target.reportLuns();
    if (!reported.includes(tlun)) return;
    const hold = s.removing ? undefined : this.faults.scanHeld(portalKey(s.portal), s.iqn, tlun);
    if (hold !== undefined) {
      await new Promise<void>((resolve) => {
        const held: HeldScan = {
          session: s,
          tlun,
          settle: hold.settle ?? 'sysfs',
          release: () => {
            this.heldScans.delete(held);
            resolve();
          },
        };
        this.heldScans.add(held);
      });
    }
    const disk = await s.target.openLun(tlun);
    const inquiry = disk ? undefined : await s.target.inquiry?.(tlun);
    if (s.removing) {
      await disk?.close();
      return;
    }
    const hctl = `${s.host}:0:0:${klun}`;
    const targetDir = `${s.sessionDir}/target${s.host}:0:0`;
    const sdevDir = `${targetDir}/${hctl}`;
    const sg = this.lowestFree(this.sgUsed);
    this.sgUsed.add(sg);
    let sd: SimLun['sd'];
    if (disk) {
      const index = this.lowestFree(this.sdUsed);
      this.sdUsed.add(index);
      sd = { index, name: sdName(index), devT: await devTOf(disk, index), disk, sizeBytes: disk.sizeBytes };
    }
    const lun: SimLun = {
      klun,
      tlun,
      hctl,
      sdevDir,
      ...(sd ? { sd } : {}),
      sg,
      state: 'running',
      devicePresent: false,
      fifos: [],
      byId: [],
      removed: false,
    };
    const wwid = disk?.wwid ?? inquiry?.wwid;
    if (wwid) lun.wwid = wwid;
    s.luns.set(klun, lun);
    try {
      await this.buildSdev(s, lun, disk, inquiry);
    } catch (error) {
      await this.removeLun(s, lun);
      throw error;
    }
    if (!sd) return;
    const portal = portalKey(s.portal);
    if (this.faults.neverAppears(portal, s.iqn, tlun)) return;
    const extra = this.faults.extraDelay(portal, s.iqn, tlun);
    // devtmpfs makes /dev/sdX as the kernel adds the disk; only udev's links lag (deviceDelayMs).
    // A slow device (a fault) is slow in the kernel: its node comes with its links.
    if (extra === 0) await this.makeNode(s, lun);
    const delay = this.deviceDelayMs + extra;
    lun.timer = setTimeout(() => {
      lun.timer = undefined;
      this.track(s, this.udevAdd(s, lun));
    }, delay);
  }

  private async buildSdev(
    s: SimSession,
    lun: SimLun,
    disk: LunDisk | undefined,
    inquiry: { type: number; vendor: string; model: string; rev: string; wwid?: string; vpdPg83?: Buffer; vpdPg80?: Buffer } | undefined,
  ): Promise<void> {
    const stage = this.stage();
    const dir = `${stage}/${lun.hctl}`;
    const type = disk ? 0 : (inquiry?.type ?? 12);
    this.writeAttrs(dir, {
      vendor: disk?.vendor ?? inquiry?.vendor ?? 'IET     ',
      model: disk?.model ?? inquiry?.model ?? 'Controller      ',
      rev: disk?.rev ?? inquiry?.rev ?? '0001',
      type: String(type),
      scsi_level: '6',
      state: lun.state,
      device_blocked: '0',
      queue_depth: '128',
      timeout: '30',
      ...(lun.wwid ? { wwid: lun.wwid } : {}),
    });
    const pg83 = disk?.vpdPg83 ?? inquiry?.vpdPg83;
    const pg80 = disk?.vpdPg80 ?? inquiry?.vpdPg80;
    if (pg83) writeFileSync(this.real(`${dir}/vpd_pg83`), pg83);
    if (pg80) writeFileSync(this.real(`${dir}/vpd_pg80`), pg80);
    this.writeAttrs(`${dir}/scsi_generic/sg${lun.sg}`, { dev: `21:${lun.sg}` });
    this.link(`scsi_generic/sg${lun.sg}`, `${dir}/generic`, true);
    this.writeAttrs(`${dir}/scsi_device/${lun.hctl}`, {});
    this.link('../../../' + lun.hctl, `${dir}/scsi_device/${lun.hctl}/device`, true);
    if (lun.sd) {
      this.writeAttrs(`${dir}/scsi_disk/${lun.hctl}`, { cache_type: 'write back' });
      this.link('../../../' + lun.hctl, `${dir}/scsi_disk/${lun.hctl}/device`, true);
      this.link('../../../../../../bus/scsi/drivers/sd', `${dir}/driver`, true);
      const block = `${dir}/block/${lun.sd.name}`;
      const [major, minor] = lun.sd.devT.split(':');
      this.writeAttrs(block, {
        dev: lun.sd.devT,
        size: String(Math.floor(lun.sd.sizeBytes / 512)),
        ro: '0',
        removable: '0',
        uevent: `MAJOR=${major}\nMINOR=${minor}\nDEVNAME=${lun.sd.name}\nDEVTYPE=disk`,
      });
      mkdirSync(this.real(`${block}/holders`), { recursive: true });
      mkdirSync(this.real(`${block}/slaves`), { recursive: true });
      this.writeAttrs(`${block}/queue`, { logical_block_size: '512', physical_block_size: '512', rotational: '1' });
      this.link(`../../../${lun.hctl}`, `${block}/device`, true);
    }
    const targetDir = `${s.sessionDir}/target${s.host}:0:0`;
    // Write entries become FIFOs before the directory is moved in, so it appears whole.
    lun.fifos.push(await this.attribute(s, `${dir}/delete`, `${lun.sdevDir}/delete`, () => this.deleteLun(s, lun)));
    lun.fifos.push(await this.attribute(s, `${dir}/rescan`, `${lun.sdevDir}/rescan`, () => this.rescanLun(lun)));
    if (s.removing || lun.removed) {
      rmSync(this.real(stage), { recursive: true, force: true });
      return;
    }
    for (let attempt = 0; ; attempt++) {
      // The target directory may just have gone with another LUN's delete: make it again.
      mkdirSync(this.real(targetDir), { recursive: true });
      try {
        renameSync(this.real(dir), this.real(lun.sdevDir));
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 3) throw error;
      }
    }
    removeTree(this.real(stage));
    const rel = `devices/platform/host${s.host}/session${s.sid}/target${s.host}:0:0/${lun.hctl}`;
    this.link(`../../../${rel}`, `/sys/bus/scsi/devices/${lun.hctl}`);
    this.link(`../../${rel}/scsi_device/${lun.hctl}`, `/sys/class/scsi_device/${lun.hctl}`);
    if (lun.sd) {
      this.link(`../../../../${rel}`, `/sys/bus/scsi/drivers/sd/${lun.hctl}`);
      this.link(`../../${rel}/scsi_disk/${lun.hctl}`, `/sys/class/scsi_disk/${lun.hctl}`);
      this.link(`../${rel}/block/${lun.sd.name}`, `/sys/block/${lun.sd.name}`);
      this.link(`../../${rel}/block/${lun.sd.name}`, `/sys/class/block/${lun.sd.name}`);
      this.link(`../../${rel}/block/${lun.sd.name}`, `/sys/dev/block/${lun.sd.devT}`);
    }
  }

  /** devtmpfs: the disk's `/dev/sdX` node (a block node of the backing device, or a hard link to the LUN file). */
  private async makeNode(s: SimSession, lun: SimLun): Promise<void> {
    const sd = lun.sd;
    if (!sd || lun.removed || s.removing || lun.nodePresent) return;
    const node = this.real(`/dev/${sd.name}`);
    rmSync(node, { force: true });
    if (sd.disk.isBlockDevice) {
      const [major, minor] = sd.devT.split(':') as [string, string];
      await this.runner.run('mknod', ['-m', '0660', node, 'b', major, minor], { timeoutMs: 10_000 });
    } else {
      try {
        // A hard link shares the LUN file's bytes and stays inside the root for HostFs.
        linkSync(sd.disk.backingPath, node);
      } catch {
        symlinkSync(sd.disk.backingPath, node);
      }
    }
    if (lun.removed || s.removing) {
      rmSync(node, { force: true });
      return;
    }
    lun.nodePresent = true;
  }

  /** udev's work for a new disk: the by-path and by-id links (and the node, for a slow device). */
  private async udevAdd(s: SimSession, lun: SimLun): Promise<void> {
    const sd = lun.sd;
    if (!sd || lun.removed || s.removing) return;
    await this.makeNode(s, lun);
    if (!lun.nodePresent) return;
    const target = `../../${sd.name}`;
    lun.byPath = `/dev/disk/by-path/ip-${s.portal.address}:${s.portal.port}-iscsi-${s.iqn}-lun-${byPathLunText(lun.klun)}`;
    this.atomicLink(target, lun.byPath);
    if (lun.wwid) {
      const names = [`scsi-${idSerialOf(lun.wwid)}`, wwnLinkOf(lun.wwid)].filter((n): n is string => n !== undefined);
      for (const name of names) {
        const owners = this.byIdOwners.get(name) ?? [];
        owners.push(sd.name);
        this.byIdOwners.set(name, owners);
        lun.byId.push(name);
        // A multipath map of this wwid keeps the link (its udev rule has the higher link_priority).
        if (!this.byIdClaims.has(name)) this.atomicLink(target, `/dev/disk/by-id/${name}`);
      }
    }
    lun.devicePresent = true;
    this.events?.diskAdded(sd.name);
  }

  private async deleteLun(s: SimSession, lun: SimLun): Promise<void> {
    if (lun.removed) return;
    // Scans held on other sessions land now: their disks are in sysfs before this one is gone.
    const released = this.releaseHeldScans((h) => h.session !== s);
    await Promise.allSettled(released.flatMap((h) => [...h.session.pending.values()]));
    for (const h of released.filter((r) => r.settle === 'udev')) {
      // udev now rather than after the delay; multipathd handles the uevent before this disk's
      // removal (one queue), so a map it builds on the released disk is there when this returns.
      for (const late of h.session.luns.values()) {
        if (late.tlun !== h.tlun || late.timer === undefined) continue;
        clearTimeout(late.timer);
        late.timer = undefined;
        await this.udevAdd(h.session, late);
      }
    }
    await this.removeLun(s, lun);
  }

  /** Let the held scans `which` selects go on; returns them. */
  private releaseHeldScans(which: (held: HeldScan) => boolean): HeldScan[] {
    const released = [...this.heldScans].filter(which);
    for (const held of released) held.release();
    return released;
  }

  private async rescanLun(lun: SimLun): Promise<void> {
    const sd = lun.sd;
    if (lun.removed || !sd) return;
    await sd.disk.refresh();
    sd.sizeBytes = sd.disk.sizeBytes;
    quietly(() => writeFileSync(this.real(`${lun.sdevDir}/block/${sd.name}/size`), `${Math.floor(sd.sizeBytes / 512)}\n`));
  }

  /** Remove a LUN: udev links and node first, then sysfs; the target directory goes with its last LUN. */
  private async removeLun(s: SimSession, lun: SimLun): Promise<void> {
    if (lun.removed) return;
    lun.removed = true;
    if (lun.timer) clearTimeout(lun.timer);
    lun.timer = undefined;
    // device-mapper lets go of the disk (map reloaded without it) before the disk goes.
    if (lun.sd && this.events) await this.events.diskRemoving(lun.sd.name).catch(() => undefined);
    for (const f of lun.fifos) f.close();
    if (lun.sd) {
      const sd = lun.sd;
      for (const link of [`/sys/block/${sd.name}`, `/sys/class/block/${sd.name}`, `/sys/dev/block/${sd.devT}`, `/sys/bus/scsi/drivers/sd/${lun.hctl}`, `/sys/class/scsi_disk/${lun.hctl}`]) {
        removeEntry(this.real(link));
      }
    }
    for (const link of [`/sys/bus/scsi/devices/${lun.hctl}`, `/sys/class/scsi_device/${lun.hctl}`]) removeEntry(this.real(link));
    removeTree(this.real(lun.sdevDir));
    s.luns.delete(lun.klun);
    if (![...s.luns.values()].some((l) => !l.removed)) {
      removeTree(this.real(`${s.sessionDir}/target${s.host}:0:0`));
    }
    if (lun.sd) {
      const sd = lun.sd;
      if (lun.byPath) removeEntry(this.real(lun.byPath));
      for (const name of lun.byId) {
        const owners = (this.byIdOwners.get(name) ?? []).filter((n) => n !== sd.name);
        const last = owners[owners.length - 1];
        if (this.byIdClaims.has(name)) {
          // The map holds the link: only the owners change.
          if (last === undefined) this.byIdOwners.delete(name);
          else this.byIdOwners.set(name, owners);
        } else if (last === undefined) {
          this.byIdOwners.delete(name);
          removeEntry(this.real(`/dev/disk/by-id/${name}`));
        } else {
          // udev points the link at another device that still has this wwid.
          this.byIdOwners.set(name, owners);
          this.atomicLink(`../../${last}`, `/dev/disk/by-id/${name}`);
        }
      }
      removeEntry(this.real(`/dev/${sd.name}`));
      lun.devicePresent = false;
      lun.nodePresent = false;
      this.sdUsed.delete(sd.index);
      this.release(s, sd.disk);
    }
    this.sgUsed.delete(lun.sg);
  }

  /**
   * Release a deleted disk's backing after its sysfs and `/dev` node are gone: a `delete` write
   * waits for the disk to go, as the kernel's does, not for the simulator's plumbing (a loop
   * device, a FUSE export and a QMP node in real-backed mode, ~170 ms each), so many disks
   * deleted together release side by side. The session's logout (and so `close`) waits for them;
   * a rescan of the same LUN opens a new backing (the target session orders it after this one).
   */
  private release(s: SimSession, disk: LunDisk): void {
    const p = disk.close().catch((error: unknown) => {
      console.error(`sim-kernel: session ${s.sid}: releasing ${disk.backingPath} failed: ${error instanceof Error ? error.message : String(error)}`);
    });
    s.releases.add(p);
    void p.finally(() => s.releases.delete(p));
  }

  private stage(): string {
    const dir = `/run/simhost/staging/${randomBytes(6).toString('hex')}`;
    mkdirSync(this.real(dir), { recursive: true });
    return dir;
  }

  // sysfs is built with synchronous calls: a few dozen tiny files per device, faster than a
  // round trip through the thread pool each, and no reader sees a half-written attribute.
  private writeAttrs(hostDir: string, attrs: Record<string, string>, mode = 0o644): void {
    mkdirSync(this.real(hostDir), { recursive: true });
    for (const [name, value] of Object.entries(attrs)) writeFileSync(this.real(`${hostDir}/${name}`), `${value}\n`, { mode });
  }

  /** A symlink at host path `link` with the relative text `target`; `inside` for links in a staging tree. */
  private link(target: string, link: string, inside = false): void {
    const real = this.real(link);
    if (!inside) rmSync(real, { force: true });
    mkdirSync(path.dirname(real), { recursive: true });
    symlinkSync(target, real);
  }

  private atomicLink(target: string, link: string): void {
    const real = this.real(link);
    mkdirSync(path.dirname(real), { recursive: true });
    const temp = `${real}.tmp-${randomBytes(4).toString('hex')}`;
    symlinkSync(target, temp);
    renameSync(temp, real);
  }
}

function quietly(fn: () => void): void {
  try {
    fn();
  } catch {
    // The entry went with its device (deleted meanwhile): nothing to update.
  }
}

/** `MAJOR:MINOR` of the disk: the backing block device's own, else the sd driver's numbering. */
async function devTOf(disk: LunDisk, index: number): Promise<string> {
  if (disk.isBlockDevice) {
    const st = await fsp.stat(disk.backingPath);
    const rdev = st.rdev;
    const major = Math.floor(rdev / 256) & 0xfff;
    const minor = (rdev & 0xff) | ((Math.floor(rdev / 2 ** 20) & 0xfff) << 8);
    return `${major}:${minor}`;
  }
  return sdDevT(index);
}

/**
 * How long iscsid takes to give up on a portal nothing answers on (initiator.c,
 * iscsi_retry_initial_login): every connect attempt runs until its login timer
 * (`login_timeout`, or sooner when the fault says so), and after each one iscsid stops once
 * `initial_login_retry_max × login_timeout` has passed since the first: with attempts that use
 * their whole timer, `max(1, retry_max)` of them.
 */
export function unreachableLoginMs(attemptMs: number, request: Pick<KernelLoginRequest, 'loginTimeoutS' | 'loginRetryMax'>): number {
  const timeoutS = request.loginTimeoutS !== undefined && request.loginTimeoutS > 0 ? request.loginTimeoutS : 30;
  const retryMax = request.loginRetryMax !== undefined && Number.isFinite(request.loginRetryMax) ? request.loginRetryMax : 4;
  const attempts = Math.max(1, retryMax);
  return attempts * Math.min(attemptMs, timeoutS * 1000);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
