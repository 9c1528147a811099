/**
 * Real-backed mode of the simulated host: `RealTargetAccess` logs in to a real tgtd with libiscsi
 * and serves each LUN as a real loop device over a qemu-storage-daemon FUSE export (the QEMU
 * machinery is `@berth/qemu`'s, shared with the iscsi-user transport).
 */
export { RealTargetAccess, REAL_DIR_PREFIX, type RealTargetAccessOptions, type DiscoverResult } from './real-target-access.js';
export { RealTargetSession } from './real-target-session.js';
export { RealLunDisk, type LunDiskPlumbing } from './real-lun-disk.js';
export { sweepStrays, type StrayReport, type SweepOptions } from './sweep-strays.js';
export { classifyLoginFailure, ISCSI_ERR_TEXT, type LoginFailure, type LoginExitCode } from './login-failure.js';
export { tgtVpdPg80, tgtVpdPg83, tgtWwid, tgtNaa3, tgtNaa6, type LunIdentity } from './tgt-identity.js';
export { startTgtd, freePort, freeControlPort, realBackedAvailable, type TestTgtd, type StartTgtdOptions } from './tgtd-harness.js';
