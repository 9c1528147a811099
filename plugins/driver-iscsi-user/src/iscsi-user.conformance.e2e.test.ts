import { describeTransportConformance } from '@berth/testkit';
import { createUserTestEnv } from './test-user-env.js';

// The iscsi-user transport against tgt volumes (CHAP on) on a private tgtd: the suite every
// transport passes, on real loop devices over qemu-storage-daemon FUSE exports.
describeTransportConformance(
  'iscsi-user (tgt volumes through qemu-storage-daemon)',
  async () => {
    const env = await createUserTestEnv();
    return {
      driver: env.driver,
      makeConnection: async () => (await env.makeVolume(8 * 1024 * 1024)).connection,
      cleanup: () => env.dispose(),
    };
  },
  { timeoutMs: 60_000, identity: true },
);
