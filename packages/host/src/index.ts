export type * from './types.js';
export * from './errors.js';
export { redact, formatCommand, quoteArg, REDACTED } from './redact.js';
export {
  createCommandRunner,
  DEFAULT_COMMAND_TIMEOUT_MS,
  type CommandLogger,
  type CommandRunnerOptions,
} from './command-runner.js';
export { createHostFs, hostPathSegments } from './host-fs.js';
export { commandStarter, commandsOutlive, spawnerPid } from './spawner.js';
export { processAliveSync, processRunsSync, processStartTicksSync } from './proc-stat.js';
export { createDeviceWaiter, deviceWaiterHandles, DEFAULT_POLL_MS } from './device-waiter.js';
export { createHostServices, type HostServicesOptions } from './host-services.js';
export { hostFacts, type HostFacts } from './host-facts.js';
export {
  startDaemon,
  daemonStatus,
  stopDaemon,
  processStartTicks,
  processRuns,
  DaemonError,
  type StartDaemonOptions,
  type DaemonStatus,
  type StopDaemonOptions,
  type StopDaemonResult,
} from './daemon.js';
export { acquireFileLock, type FileLockOptions, type ReleaseLock } from './file-lock.js';
export { nativeProgram, LOOP_DETACH_PROGRAM } from './native-program.js';
export { createFileWhole, writeFileAtomically } from './atomic-file.js';
export { freeTcpPort, acceptsConnection } from './free-port.js';
export { holderOf, lastingHolderOf, majorMinor, parseFuserPids, DEFAULT_HOLDER_GRACE_MS, type HeldDevice, type HolderCheckOptions } from './device-holders.js';
