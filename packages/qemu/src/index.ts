/**
 * @berth/qemu: berth's one implementation of the QEMU machinery — the QMP client, a supervised
 * qemu-storage-daemon, iSCSI block nodes with CHAP from secret files, FUSE exports, and loop
 * devices on them (never with direct I/O).
 */
export { QmpClient, qmpFailureOf, isQmpFailure, isQmpConnectionLost, DEFAULT_QMP_TIMEOUT_MS, type QmpCallOptions, type QmpFailure, type QmpEventListener } from './qmp-client.js';
export * from './qmp-schemas.js';
export { StorageDaemon, storageDaemonPaths, QSD_BINARY, QSD_INSTALL_HINT, type StorageDaemonOptions } from './storage-daemon.js';
export { addIscsiNode, removeIscsiNode, removeSecret, writeSecretFile, wireLun, type IscsiNodeSpec } from './iscsi-node.js';
export { addRawFilter, repointFilter, removeUnusedNode } from './filter-node.js';
export { addFuseExport, removeFuseExport, listExports, listBlockNodes, waitForFuseSize, type FuseExportSpec } from './fuse-export.js';
export {
  attachFuseLoop,
  detachFuseLoop,
  flushLoop,
  loopInfo,
  loopName,
  loopsBacking,
  setLoopCapacity,
  DEFAULT_HOLDER_GRACE_MS,
  LOOP_DETACH_HELPER,
  type DetachLoopOptions,
  type LoopInfo,
  type LoopStepOptions,
} from './fuse-loop.js';
export { abortFuseConnection, fuseConnectionIn, fusectlMounted, fuseMountsUnder, parseProcMounts, unmountFuseUnder, FUSE_CONNECTIONS_DIR, type MountEntry } from './fuse-mounts.js';
