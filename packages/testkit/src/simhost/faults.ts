import { parsePortal, samePortal } from './portal-address.js';

/** Which logins, sessions or LUNs a fault applies to; an absent field matches anything. */
export interface FaultMatch {
  /** `host:port` (IPv6 in brackets; port 3260 when absent). */
  portal?: string;
  iqn?: string;
  /** The target's LUN number (as in connection_info's `target_lun`). */
  lun?: number;
}

/** Faults as data: what `faults.json` and the control RPC carry. */
export interface FaultSpec {
  /** Logins that fail with an iscsiadm exit code (e.g. 5, 19, 24); `times` limits how often. */
  loginFailures?: Array<FaultMatch & { exitCode: number; times?: number }>;
  /** Portals whose logins hang for `connectTimeoutMs` then fail with 8 (discovery: 11). */
  unreachablePortals?: Array<{ portal: string; connectTimeoutMs?: number }>;
  /** LUNs whose device appears `extraDelayMs` later than the device delay. */
  slowDevices?: Array<FaultMatch & { extraDelayMs: number }>;
  /** LUNs the kernel finds (sysfs) but whose /dev node and udev links never appear. */
  devicesNeverAppear?: FaultMatch[];
}

/** Default connect timeout of an unreachable portal, in ms (bounded: tests must not wait 2 min). */
export const DEFAULT_CONNECT_TIMEOUT_MS = 200;

/** The fault switches the kernel model consults; all settable at runtime. */
export class FaultSet {
  private spec: Required<FaultSpec> = { loginFailures: [], unreachablePortals: [], slowDevices: [], devicesNeverAppear: [] };

  /** Replace every fault with `spec`. */
  load(spec: FaultSpec): void {
    this.spec = {
      loginFailures: [...(spec.loginFailures ?? [])].map((f) => ({ ...f })),
      unreachablePortals: [...(spec.unreachablePortals ?? [])].map((f) => ({ ...f })),
      slowDevices: [...(spec.slowDevices ?? [])].map((f) => ({ ...f })),
      devicesNeverAppear: [...(spec.devicesNeverAppear ?? [])].map((f) => ({ ...f })),
    };
  }

  /** Every fault now set. */
  current(): FaultSpec {
    return JSON.parse(JSON.stringify(this.spec)) as FaultSpec;
  }

  /** Add a login failure. */
  failLogin(fault: FaultMatch & { exitCode: number; times?: number }): void {
    this.spec.loginFailures.push({ ...fault });
  }

  /** Make a portal unreachable. */
  unreachablePortal(portal: string, connectTimeoutMs = DEFAULT_CONNECT_TIMEOUT_MS): void {
    this.spec.unreachablePortals.push({ portal, connectTimeoutMs });
  }

  /** Make matching devices slow to appear. */
  slowDevice(fault: FaultMatch & { extraDelayMs: number }): void {
    this.spec.slowDevices.push({ ...fault });
  }

  /** Make matching devices never appear in /dev. */
  deviceNeverAppears(fault: FaultMatch): void {
    this.spec.devicesNeverAppear.push({ ...fault });
  }

  /** Remove every fault. */
  clear(): void {
    this.load({});
  }

  /** @internal the connect timeout when `portal` is unreachable. */
  unreachable(portal: string): number | undefined {
    const p = parsePortal(portal);
    const hit = this.spec.unreachablePortals.find((f) => samePortal(parsePortal(f.portal), p));
    return hit ? (hit.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS) : undefined;
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
