import { defineConfig } from 'vitest/config';

// The HTTP suites that go through the store run twice: on the embedded SQLite store and, as the
// `postgres` project, on PostgreSQL (one throwaway cluster for the run, a fresh database per test
// app: see src/test-postgres-setup.ts). Everything else runs once.
const STORE_SUITES = [
  'src/api.e2e.test.ts',
  'src/concurrency.e2e.test.ts',
  'src/errors.e2e.test.ts',
  'src/hostile.e2e.test.ts',
  'src/hosts.e2e.test.ts',
  'src/iscsi.e2e.test.ts',
  'src/long-poll.e2e.test.ts',
  'src/reconcile.e2e.test.ts',
];

export default defineConfig({
  test: {
    // Loop devices and /dev/berth are global on the machine: run files one after another.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 60_000,
    projects: [
      { extends: true, test: { name: 'sqlite', include: ['src/**/*.test.ts'] } },
      { extends: true, test: { name: 'postgres', include: STORE_SUITES, globalSetup: ['src/test-postgres-setup.ts'] } },
    ],
  },
});
