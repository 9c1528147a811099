import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // The e2e tests start a simulated host (a kernel process, fake iscsiadm/multipath runs at about
    // 80 ms each); a loaded 2-core CI machine needs more than the 5 s default.
    testTimeout: 90_000,
    hookTimeout: 90_000,
  },
});
