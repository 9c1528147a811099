import type { BerthError, Logger } from '@berth/core';
import type { CommandRunner, DeviceWaiter, HostFs } from '@berth/host';
import type { IscsiadmClient, LunDevice, LunLifecycle, LunProgress, MultipathClient } from '@berth/iscsi';
import type { AttachStateStore } from './attach-state.js';
import type { PathTarget } from './multipath-connection.js';
import type { MapHost } from './multipath-map.js';
import type { MultipathDriverOptions } from './options.js';

/** What became of one path in a connect. */
export type PathState = 'active' | 'failed' | 'refused' | 'not-in-map' | 'unused';

/** One path's outcome in a connect. */
export interface PathOutcome {
  target: PathTarget;
  /** `up`: session and device are there; the rest did not make it. */
  status: 'up' | 'failed' | 'refused' | 'unused';
  device?: LunDevice;
  wwn?: string;
  error?: BerthError;
  /** What the path's connect did (for its undo); empty for a path that failed (already undone). */
  progress: LunProgress;
}

/** Everything the phases of the multipath transport reach the host and its own state through. */
export interface MultipathContext {
  fs: HostFs;
  runner: CommandRunner;
  waiter: DeviceWaiter;
  iscsiadm: IscsiadmClient;
  multipath: MultipathClient;
  /** The single-LUN lifecycle each path runs (node record, session, scan, removal, logout decision). */
  lifecycle: LunLifecycle;
  mapHost: MapHost;
  states: AttachStateStore;
  options: MultipathDriverOptions;
  logger: Logger;
}

/** The progress of a path that never started (or whose connect undid itself). */
export function emptyProgress(): LunProgress {
  return { createdRecord: false, loggedIn: false, registered: false, scanned: false };
}
