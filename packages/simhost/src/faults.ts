import { parsePortal, samePortal } from './portal-address.js';

/** Which logins, sessions or LUNs a fault applies to; an absent field matches anything. */
export interface FaultMatch {
  /** `host:port` (IPv6 in brackets; port 3260 when absent). */
  portal?: string;
  iqn?: string;
  /** The target's LUN number (as in connection_info's `target_lun`). */
  lun?: number;
}

/** Scans held by `FaultSpec.heldScans`: which, and how far a releasing delete lets them get first (default `sysfs`). */
export interface HeldScanMatch extends FaultMatch {
  settle?: 'sysfs' | 'udev';
}

/** Faults as data: what `faults.json` and the control RPC carry. */
export interface FaultSpec {
  /** Logins that fail with an iscsiadm exit code (e.g. 5, 19, 24); `times` limits how often. */
  loginFailures?: Array<FaultMatch & { exitCode: number; times?: number }>;
  /**
   * Portals nothing answers on. A login there makes connect attempts as iscsid does: each hangs
   * until the record's `node.conn[0].timeo.login_timeout` (or `connectTimeoutMs`, when shorter: a
   * test's scaled clock), and iscsid gives up with 8 after `node.session.initial_login_retry_max`
   * of them (at least one). Discovery there fails with 11 after `connectTimeoutMs` (default 200).
   */
  unreachablePortals?: Array<{ portal: string; connectTimeoutMs?: number }>;
  /** LUNs whose device appears `extraDelayMs` later than the device delay. */
  slowDevices?: Array<FaultMatch & { extraDelayMs: number }>;
  /** LUNs the kernel finds (sysfs) but whose /dev node and udev links never appear. */
  devicesNeverAppear?: FaultMatch[];
  /** Fake tool runs that fail without doing anything (`blockdev --flushbufs`, `iscsiadm --logout`, …). */
  toolFailures?: ToolFailure[];
  /** multipathd is not running (default: running). */
  multipathdStopped?: boolean;
  /** multipathd misses new disks' uevents: a map forms only on `multipathd add path` or `reconfigure`. */
  multipathdMissesNewPaths?: boolean;
  /** Multipath maps someone holds open (by map name or `dm-N`): they cannot be flushed. */
  mapsHeldOpen?: string[];
  /**
   * Scans of matching LUNs that park before the kernel finds anything (sysfs shows nothing yet),
   * as a scan the killed writer left behind: released by a `delete` written to a disk of another
   * session (which waits for the released disks to be in sysfs before its own disk goes), by the
   * session's logout, or when the fault is cleared. `settle: 'udev'`: that delete also waits for
   * the released disks' udev work and multipathd's handling of them (a map may form on them).
   */
  heldScans?: HeldScanMatch[];
  /**
   * Logins to matching portals that stay alive but do not end (a slow target, a login PDU exchange
   * that drags): iscsid carries them on whatever happens to the `iscsiadm --login` that asked
   * (killing it does not stop them), and a second login of the record gets 15 meanwhile. Each goes
   * on — and logs in as usual — when its fault is removed (`releaseLogins`, a reload, a clear), or
   * after `holdMs` when given; as iscsid, it fails with 8 once `initial_login_retry_max ×
   * login_timeout` (the record's) passed first.
   */
  heldLogins?: HeldLoginMatch[];
}

/** Logins held by `FaultSpec.heldLogins`: which, and for how long at most (default: until released). */
export interface HeldLoginMatch extends FaultMatch {
  holdMs?: number;
}

/** A fake tool run that fails: matched by tool name and arguments, answered with `exitCode`. */
export interface ToolFailure {
  /** `iscsiadm`, `blockdev`, `multipath`, `multipathd`. */
  tool: string;
  /** Arguments that must all be in argv (any order), e.g. `['--flushbufs']` or `['-m', 'node', '--logout']`; absent: any run. */
  args?: string[];
  exitCode: number;
  stdout?: string;
  stderr?: string;
  /** How many runs fail (default: every run). */
  times?: number;
  /** Wait this long before answering (a slow tool), ms. */
  delayMs?: number;
}

/** Default connect timeout of discovery through an unreachable portal, in ms (bounded: tests must not wait 2 min). */
export const DEFAULT_CONNECT_TIMEOUT_MS = 200;

/** The fault switches the kernel model consults; all settable at runtime. */
export class FaultSet {
  private spec: Required<FaultSpec> = FaultSet.empty();
  private readonly listeners = new Set<() => void>();

  private static empty(): Required<FaultSpec> {
    return {
      loginFailures: [],
      unreachablePortals: [],
      slowDevices: [],
      devicesNeverAppear: [],
      toolFailures: [],
      multipathdStopped: false,
      multipathdMissesNewPaths: false,
      mapsHeldOpen: [],
      heldScans: [],
      heldLogins: [],
    };
  }

  /** Replace every fault with `spec`. */
  load(spec: FaultSpec): void {
    this.spec = {
      loginFailures: [...(spec.loginFailures ?? [])].map((f) => ({ ...f })),
      unreachablePortals: [...(spec.unreachablePortals ?? [])].map((f) => ({ ...f })),
      slowDevices: [...(spec.slowDevices ?? [])].map((f) => ({ ...f })),
      devicesNeverAppear: [...(spec.devicesNeverAppear ?? [])].map((f) => ({ ...f })),
      toolFailures: [...(spec.toolFailures ?? [])].map((f) => ({ ...f, ...(f.args ? { args: [...f.args] } : {}) })),
      multipathdStopped: spec.multipathdStopped ?? false,
      multipathdMissesNewPaths: spec.multipathdMissesNewPaths ?? false,
      mapsHeldOpen: [...(spec.mapsHeldOpen ?? [])],
      heldScans: [...(spec.heldScans ?? [])].map((f) => ({ ...f })),
      heldLogins: [...(spec.heldLogins ?? [])].map((f) => ({ ...f })),
    };
    this.changed();
  }

  /** Call `listener` after every change (the multipath model starts or stops multipathd on it). */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Every fault now set. */
  current(): FaultSpec {
    return JSON.parse(JSON.stringify(this.spec)) as FaultSpec;
  }

  /** Add a login failure. */
  failLogin(fault: FaultMatch & { exitCode: number; times?: number }): void {
    this.spec.loginFailures.push({ ...fault });
  }

  /** Make a portal unreachable (each connect attempt there hangs `connectTimeoutMs`, default: until the login timeout). */
  unreachablePortal(portal: string, connectTimeoutMs?: number): void {
    this.spec.unreachablePortals.push({ portal, ...(connectTimeoutMs === undefined ? {} : { connectTimeoutMs }) });
  }

  /** Make matching devices slow to appear. */
  slowDevice(fault: FaultMatch & { extraDelayMs: number }): void {
    this.spec.slowDevices.push({ ...fault });
  }

  /** Make matching devices never appear in /dev. */
  deviceNeverAppears(fault: FaultMatch): void {
    this.spec.devicesNeverAppear.push({ ...fault });
  }

  /** Make matching fake tool runs fail. */
  failTool(failure: ToolFailure): void {
    this.spec.toolFailures.push({ ...failure, ...(failure.args ? { args: [...failure.args] } : {}) });
  }

  /** Stop (`false`) or start (`true`) multipathd. */
  setMultipathd(running: boolean): void {
    this.spec.multipathdStopped = !running;
    this.changed();
  }

  /** Make multipathd miss (or see again) new disks' uevents. */
  setMultipathdMissesNewPaths(on: boolean): void {
    this.spec.multipathdMissesNewPaths = on;
    this.changed();
  }

  /** Hold a multipath map open (by name or `dm-N`), or let go of it. */
  holdMapOpen(map: string, open: boolean): void {
    this.spec.mapsHeldOpen = this.spec.mapsHeldOpen.filter((m) => m !== map);
    if (open) this.spec.mapsHeldOpen.push(map);
    this.changed();
  }

  /** Hold the scans of matching LUNs (see `FaultSpec.heldScans`). */
  holdScans(match: HeldScanMatch): void {
    this.spec.heldScans.push({ ...match });
    this.changed();
  }

  /** Hold the logins to matching portals (see `FaultSpec.heldLogins`). */
  holdLogins(match: HeldLoginMatch): void {
    this.spec.heldLogins.push({ ...match });
    this.changed();
  }

  /** Let every held login go on (and hold no more). */
  releaseLogins(): void {
    this.spec.heldLogins = [];
    this.changed();
  }

  /** Remove every fault. */
  clear(): void {
    this.load({});
  }

  /** @internal the failure a tool run must answer with (consumes one of `times`). */
  takeToolFailure(tool: string, argv: readonly string[]): ToolFailure | undefined {
    const index = this.spec.toolFailures.findIndex((f) => f.tool === tool && (f.args ?? []).every((a) => argv.includes(a)));
    if (index < 0) return undefined;
    const fault = this.spec.toolFailures[index]!;
    if (fault.times !== undefined) {
      fault.times -= 1;
      if (fault.times <= 0) this.spec.toolFailures.splice(index, 1);
    }
    return { ...fault };
  }

  /** @internal whether multipathd runs. */
  multipathdRunning(): boolean {
    return !this.spec.multipathdStopped;
  }

  /** @internal whether multipathd misses new disks. */
  multipathdMissesNewPaths(): boolean {
    return this.spec.multipathdMissesNewPaths;
  }

  /** @internal whether a map (its name or `dm-N`) is held open. */
  mapHeldOpen(name: string, dm: string): boolean {
    return this.spec.mapsHeldOpen.includes(name) || this.spec.mapsHeldOpen.includes(dm);
  }

  private changed(): void {
    for (const listener of this.listeners) listener();
  }

  /** @internal how long one connect attempt to `portal` hangs (Infinity: until a timeout), when it is unreachable. */
  unreachable(portal: string): number | undefined {
    const p = parsePortal(portal);
    const hit = this.spec.unreachablePortals.find((f) => samePortal(parsePortal(f.portal), p));
    return hit ? (hit.connectTimeoutMs ?? Number.POSITIVE_INFINITY) : undefined;
  }

  /** @internal the exit code a login must fail with (consumes one of `times`). */
  takeLoginFailure(portal: string, iqn: string): number | undefined {
    const index = this.spec.loginFailures.findIndex((f) => matches(f, portal, iqn));
    if (index < 0) return undefined;
    const fault = this.spec.loginFailures[index]!;
    if (fault.times !== undefined) {
      fault.times -= 1;
      if (fault.times <= 0) this.spec.loginFailures.splice(index, 1);
    }
    return fault.exitCode;
  }

  /** @internal extra device delay of a LUN. */
  extraDelay(portal: string, iqn: string, lun: number): number {
    return this.spec.slowDevices.filter((f) => matches(f, portal, iqn, lun)).reduce((sum, f) => sum + f.extraDelayMs, 0);
  }

  /** @internal the `heldScans` entry a scan of the LUN parks on, if any. */
  scanHeld(portal: string, iqn: string, lun: number): HeldScanMatch | undefined {
    return this.spec.heldScans.find((f) => matches(f, portal, iqn, lun));
  }

  /** @internal the `heldLogins` entry a login parks on, if any. */
  loginHeld(portal: string, iqn: string): HeldLoginMatch | undefined {
    return this.spec.heldLogins.find((f) => matches(f, portal, iqn));
  }

  /** @internal whether the LUN's device must never appear. */
  neverAppears(portal: string, iqn: string, lun: number): boolean {
    return this.spec.devicesNeverAppear.some((f) => matches(f, portal, iqn, lun));
  }
}

function matches(f: FaultMatch, portal: string, iqn: string, lun?: number): boolean {
  if (f.iqn !== undefined && f.iqn !== iqn) return false;
  if (f.portal !== undefined && !samePortal(parsePortal(f.portal), parsePortal(portal))) return false;
  if (f.lun !== undefined && lun !== undefined && f.lun !== lun) return false;
  return true;
}
