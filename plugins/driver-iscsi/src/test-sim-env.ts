import type { ConnectionInfo } from '@berth/core';
import { startDriverTestEnv, startSimWith, type DriverTestEnv } from '@berth/iscsi/testing';
import { SimulatedHost, type ModelTargetSpec, type SimulatedHostOptions } from '@berth/simhost';
import { createIscsiDriver, STATE_SUBDIR } from './iscsi-driver.js';
import type { IscsiDriverOptionsInput } from './options.js';

export { existsUnder, wwnOf } from '@berth/iscsi/testing';

/** The portal every test target answers on. */
export const PORTAL = '127.0.0.1:3260';

/** A simulated host, a data dir and the `iscsi` driver on them; `dispose()` removes everything. */
export interface SimEnv extends DriverTestEnv<IscsiDriverOptionsInput> {
  sim: SimulatedHost;
  /** The persisted attach state file of a volume, or undefined. */
  stateFile(volumeId: string): Promise<string | undefined>;
  /** How many `iscsiadm … --login` runs the driver made. */
  logins(): number;
}

/** Start a simulated host and an `iscsi` driver on it. */
export async function startSimEnv(
  options: { sim?: SimulatedHostOptions; driver?: IscsiDriverOptionsInput; targets?: ModelTargetSpec[] } = {},
): Promise<SimEnv> {
  const env = await startDriverTestEnv({
    dataDirPrefix: 'berth-driver-iscsi-',
    start: () =>
      startSimWith(
        () => SimulatedHost.start({ deviceDelayMs: 20, ...options.sim }),
        async (sim) => {
          for (const target of options.targets ?? []) await sim.san.addTarget(target);
        },
      ),
    make: createIscsiDriver,
    options: options.driver ?? {},
    stateSubdir: STATE_SUBDIR,
  });
  return Object.assign(env, { stateFile: env.stateText, logins: env.loginRuns });
}

/** An `iscsi` connection_info for LUN `lun` of `iqn` at the test portal (Cinder's shape). */
export function connectionFor(iqn: string, lun: number, extra: Record<string, unknown> = {}): ConnectionInfo {
  return { driver_volume_type: 'iscsi', data: { target_portal: PORTAL, target_iqn: iqn, target_lun: lun, ...extra } } as ConnectionInfo;
}

/** A target of `lunCount` disk LUNs (1…n) of 8 MiB each at the test portal. */
export function targetSpec(iqn: string, lunCount: number, extra: Partial<ModelTargetSpec> = {}): ModelTargetSpec {
  const luns: ModelTargetSpec['luns'] = {};
  for (let lun = 1; lun <= lunCount; lun++) luns[lun] = { sizeBytes: 8 * 1024 * 1024 };
  return { iqn, portals: [PORTAL], luns, ...extra };
}
