import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // The PostgreSQL suites create a database per test on a machine shared with other builds.
    testTimeout: 30_000,
    hookTimeout: 120_000,
  },
});
