import type { DriverCatalog } from '../catalog.js';
import type { BerthConfig } from '../config.js';
import type { FaultInjector } from '../faults.js';
import type { HostIdentity } from '../host-identity.js';
import type { KeyedLock } from '../keyed-lock.js';
import type { Logger } from '../logger.js';
import type { PipelineDeps } from '../pipeline/context.js';
import type { OperationRunner } from '../pipeline/operation-runner.js';
import type { Store } from '../store.js';
import type { LocalHost } from './local-host.js';

/** What the service's actions share: one set per `BerthServiceImpl`, built in its constructor. */
export interface ServiceParts {
  config: BerthConfig;
  store: Store;
  catalog: DriverCatalog;
  identity: HostIdentity;
  logger: Logger;
  /** Per-volume lock (queues, never rejects) around every change of one volume in this process. */
  volumeLocks: KeyedLock;
  /** Per-server lock around a reservation only: attaches of different volumes to one server run in parallel. */
  serverLocks: KeyedLock;
  /** This process (`pid@host`): the owner of its operations. */
  owner: string;
  faults: FaultInjector;
  runner: OperationRunner;
  /** What the pipelines need, built once from the parts above. */
  deps: PipelineDeps;
  localHost: LocalHost;
}
