import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // The e2e tests start a simulated host (a kernel process and fake iscsiadm runs); a loaded
    // 2-core CI machine needs more than the 5 s default.
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
