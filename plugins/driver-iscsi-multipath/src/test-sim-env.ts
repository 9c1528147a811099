import path from 'node:path';
import type { ConnectionInfo } from '@berth/core';
import { startDriverTestEnv, startSimWith, type DriverTestEnv } from '@berth/iscsi/testing';
import { SimulatedHost, type ModelSan, type ModelTargetSpec, type SimulatedHostOptions } from '@berth/simhost';
import { createMultipathDriver, STATE_SUBDIR } from './multipath-driver.js';
import { AdvertisingTargetAccess } from './test-advertising-target-access.js';
import type { MultipathDriverOptionsInput } from './options.js';

export { existsUnder, recordingLogger, wwnOf, type LogLine } from '@berth/iscsi/testing';

/** The portals the test SAN answers on (the model SAN needs no network: they are names). */
export const PORTALS = ['127.0.0.1:3260', '127.0.0.2:3260', '127.0.0.3:3260', '127.0.0.4:3260'] as const;

/** A simulated host, a data dir and the `iscsi-multipath` driver on them; `dispose()` removes everything. */
export interface SimEnv extends DriverTestEnv<MultipathDriverOptionsInput> {
  sim: SimulatedHost;
  /** The SAN behind the sessions (the simulator's model, or the advertising one). */
  san: Pick<ModelSan, 'addTarget' | 'targets' | 'setDiscoveryChap' | 'addLun'>;
  /** The persisted attach state of a volume, parsed, or undefined. */
  stateFile(volumeId: string): Promise<Record<string, unknown> | undefined>;
}

/** Start a simulated host with `targets` and an `iscsi-multipath` driver on it. */
export async function startSimEnv(
  options: {
    sim?: SimulatedHostOptions;
    driver?: MultipathDriverOptionsInput;
    targets?: ModelTargetSpec[];
    /** SendTargets lists every portal of a target (most arrays), not only the one asked (tgtd). */
    advertiseAll?: boolean;
  } = {},
): Promise<SimEnv> {
  let san: SimEnv['san'] | undefined;
  const env = await startDriverTestEnv({
    dataDirPrefix: 'berth-driver-iscsi-mp-',
    async start(dataDir) {
      const access = options.advertiseAll === true ? new AdvertisingTargetAccess(path.join(dataDir, 'san')) : undefined;
      return startSimWith(
        () => SimulatedHost.start({ deviceDelayMs: 20, ...(access === undefined ? {} : { targetAccess: access }), ...options.sim }),
        async (sim) => {
          const chosen = access?.model ?? sim.san;
          san = chosen;
          for (const target of options.targets ?? []) await chosen.addTarget(target);
        },
      );
    },
    make: createMultipathDriver,
    options: options.driver ?? {},
    stateSubdir: STATE_SUBDIR,
  });
  return Object.assign(env, {
    san: san ?? env.sim.san,
    async stateFile(volumeId: string) {
      const text = await env.stateText(volumeId);
      return text === undefined ? undefined : (JSON.parse(text) as Record<string, unknown>);
    },
  });
}

/** A connection_info with os-brick's lists: LUN `lun` of `iqn` on every one of `portals`. */
export function listConnection(iqn: string, lun: number, portals: readonly string[], extra: Record<string, unknown> = {}): ConnectionInfo {
  return {
    driver_volume_type: 'iscsi',
    data: {
      target_portal: portals[0],
      target_iqn: iqn,
      target_lun: lun,
      target_portals: [...portals],
      target_iqns: portals.map(() => iqn),
      target_luns: portals.map(() => lun),
      ...extra,
    },
  } as ConnectionInfo;
}

/** A connection_info naming one portal only: the transport discovers the others (`advertise: 'first'`). */
export function discoveryConnection(iqn: string, lun: number, portal: string, extra: Record<string, unknown> = {}): ConnectionInfo {
  return { driver_volume_type: 'iscsi', data: { target_portal: portal, target_iqn: iqn, target_lun: lun, ...extra } } as ConnectionInfo;
}

/** A target of `lunCount` disk LUNs (1…n) of 8 MiB each on `portals`. */
export function targetSpec(iqn: string, portals: readonly string[], lunCount = 1, extra: Partial<ModelTargetSpec> = {}): ModelTargetSpec {
  const luns: ModelTargetSpec['luns'] = {};
  for (let lun = 1; lun <= lunCount; lun++) luns[lun] = { sizeBytes: 8 * 1024 * 1024 };
  return { iqn, portals: [...portals], luns, ...extra };
}

