import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // The e2e files start tgtd and log in over TCP; a slow CI machine needs more than 5 s.
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
