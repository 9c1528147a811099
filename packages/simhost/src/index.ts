/**
 * The simulated host: a root directory laid out like a Linux host's kernel view plus fake
 * `iscsiadm`/`blockdev`/`multipath`/`multipathd`, for running iSCSI drivers (single-path and
 * multipath) unchanged without kernel iSCSI or device-mapper.
 * No vitest here: the production CLI loads it (lazily) for `berth --simulate`.
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
export type { SimKernelState, SimSessionState, SimLunState, SimLoginCount, SimDisk, DiskEvents, KernelLoginRequest } from './sim-kernel.js';
export type { SimState } from './sim-state.js';
export {
  DmMultipath,
  DM_MAJOR,
  WWIDS_FILE,
  WWIDS_FILE_HEADER,
  type DmMultipathOptions,
  type MultipathActor,
  type FlushResult,
  type FindMultipaths,
  type SimMapState,
  type SimMapPathState,
  type SimMultipathdState,
} from './dm-multipath.js';
export { formatSize, formatTopology, formatPathTable, formatMapTable, formatStatus, type PathView, type MapView, type GroupView } from './multipath-format.js';
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
export { LoopBackedTargetAccess } from './loop-backed-target-access.js';
export { FaultSet, DEFAULT_CONNECT_TIMEOUT_MS, type FaultSpec, type FaultMatch, type HeldLoginMatch, type HeldScanMatch, type ToolFailure } from './faults.js';
export type { TargetAccess, TargetSession, LunDisk, LunInquiry, LoginAuth, LoginRequest, LoginResult } from './target-access.js';
export { tgtLunIdentity, tgtScsiId, tgtScsiSerial, idSerialOf, wwnLinkOf, type LunIdentity } from './tgt-identity.js';
export { sdName, sdDevT, kernelLunOf, targetLunOf, byPathLunText } from './sd-names.js';
export { NodeDb, type NodeRecord, type DiscoveryRecord } from './node-db.js';
export { NODE_KEYS, DISCOVERY_KEYS, formatRecordShow, formatRecordFile, parseRecordFile } from './idbm-record.js';
export { ISCSI_ERR_TEXT, iscsiErrText } from './iscsi-errors.js';
export type { ToolResult } from './tool-protocol.js';
export { callTool } from './tool-client.js';
export type { ToolCall } from './tool-wire.js';
