export * from './errors.js';
export { lazySchema } from './lazy-schema.js';
export * from './connection.js';
export * from './model.js';
export * from './hypervisor.js';
export * from './work-item.js';
export * from './transitions.js';
export type * from './contracts/index.js';
export type * from './store.js';
export { withDeferredDurability } from './store.js';
export * from './logger.js';
export * from './plugin.js';
export type * from './service.js';
export * from './agent-protocol.js';
export { runHostStep, type HostStepHost, type HostStepRun } from './host-steps/run-host-step.js';
export { baseConnectorOf, serverNameFor } from './service/local-host.js';
export { pickHost } from './service/resolve.js';
export { startTransportUpkeep, startUpkeepRounds, type TransportUpkeepParts, type UpkeepRounds } from './service/upkeep.js';
export * from './config.js';
export * from './container.js';
export * from './catalog.js';
export * from './plugin-loader.js';
export * from './host-consumer.js';
export { virtioDiskName } from './guest-disk.js';
export * from './keyed-lock.js';
export * from './store-errors.js';
export { createMonotonicClock, isoTimestamp } from './monotonic-clock.js';
export { createMemoryStore } from './memory-store.js';
export { distinctDevices, hostDeviceRow, newAttachmentRow, newOperationRow, newServerRow, newWorkItemRow, operationLeaseMs, operationPruneFilter, workItemOutcomeRow, zLeaseMs } from './store-rows.js';
export { createNotificationHub, zNotificationChannel, zNotificationPayload, type NotificationHub } from './notification-hub.js';
export * from './deadline.js';
export * from './requests.js';
export type * from './host-identity.js';
export * from './pipeline/operation-runner.js';
export type * from './pipeline/step.js';
export * from './pipeline/context.js';
export { attachSteps, type AttachOptions } from './pipeline/attach.js';
export { detachSteps, detachableFrom, markDetachFailed } from './pipeline/detach.js';
export { BerthServiceImpl } from './berth-service.js';
export * from './faults.js';
export { recoverOperation, findReservation, type RecoveryDeps } from './pipeline/recovery.js';
export * from './reports.js';
export { commandsEnded, DEAD_OWNER_KILL_MARGIN_MS, ownerAlive, ownerHost, ownerState } from './owner.js';
export * from './device-identity.js';
export { withLease, deviceLeaseKey, type LeaseOptions } from './lease.js';
export { withStoreRetry, retryableStoreError, type StoreRetryOptions } from './pipeline/store-retry.js';
export {
  connectShared,
  releaseShared,
  publishShared,
  unpublishShared,
  deviceSharers,
  devicesInUse,
  exportSharers,
  withDeviceLease,
  type ConnectRequest,
  type ReleaseRequest,
  type ReleaseOutcome,
  type UnpublishRequest,
} from './pipeline/device-sharing.js';
export {
  describeFinding,
  failedPaths,
  findDifferences,
  findStatusMismatches,
  listTransports,
  runReconcile,
  sourceMatches,
  volumeOfSource,
  volumeRepairPath,
  type Finding,
  type ReconcileDeps,
  type ReconcileFacts,
  type TransportListing,
} from './reconcile/index.js';
