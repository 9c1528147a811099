import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Loop device tests run real losetup; a slow CI machine needs more than the 5 s default.
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
