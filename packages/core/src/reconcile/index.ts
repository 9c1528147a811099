// `berth reconcile`: facts (what is read), findings (pure rules), fixes (what is done), run (the whole).
export { busyVolumeIds, listTransports, readExports, readListings } from './facts.js';
export {
  describeFinding,
  failedPaths,
  findDifferences,
  findStatusMismatches,
  madeByPipeline,
  sourceMatches,
  volumeOfSource,
  volumeRepairPath,
  type Finding,
  type ReconcileFacts,
  type TransportListing,
} from './findings.js';
export type { ReconcileDeps } from './fixes.js';
export { runReconcile } from './run.js';
