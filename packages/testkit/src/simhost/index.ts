/**
 * The simulated host: a root directory laid out like a Linux host's kernel view plus fake
 * `iscsiadm`/`blockdev`, for running iSCSI drivers unchanged without kernel iSCSI.
 * Import through `@berth/testkit/simhost` (no vitest needed).
 */
export {
  SimulatedHost,
  SimSan,
  SimFaults,
  type SimulatedHostOptions,
  type TargetAccessFactoryRef,
  type DetachedConfig,
} from './simulated-host.js';
export { KernelDaemon, DEFAULT_DEVICE_DELAY_MS, type KernelDaemonOptions, type ToolHandler } from './kernel-daemon.js';
export type { SimState, SimSessionState, SimLunState, KernelLoginRequest } from './sim-kernel.js';
export { SimKernel } from './sim-kernel.js';
export {
  ModelTargetAccess,
  type ModelSan,
  type ModelTargetSpec,
  type ModelLunSpec,
  type ModelTargetInfo,
  type ModelLunInfo,
  type ChapAccount,
  type ModelTargetAccessOptions,
} from './model-target-access.js';
export { FaultSet, DEFAULT_CONNECT_TIMEOUT_MS, type FaultSpec, type FaultMatch } from './faults.js';
export type { TargetAccess, TargetSession, LunDisk, LunInquiry, LoginAuth, LoginRequest, LoginResult } from './target-access.js';
export { tgtLunIdentity, tgtScsiId, tgtScsiSerial, idSerialOf, wwnLinkOf, type LunIdentity } from './tgt-identity.js';
export { sdName, sdDevT, kernelLunOf, targetLunOf, byPathLunText } from './sd-names.js';
export { NodeDb, type NodeRecord, type DiscoveryRecord } from './node-db.js';
export { NODE_KEYS, DISCOVERY_KEYS, formatRecordShow, formatRecordFile, parseRecordFile } from './idbm-record.js';
export { ISCSI_ERR_TEXT, iscsiErrText } from './iscsi-errors.js';
export type { ToolResult } from './tool-protocol.js';
