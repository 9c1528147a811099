import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['*.e2e.test.ts', 'e2e/*.e2e.test.ts', 'faults/*.e2e.test.ts'],
    // Every test runs the real CLI (a Node process each) against real loop devices.
    testTimeout: 120_000,
    hookTimeout: 60_000,
    // Loop devices and /dev/berth are machine-global: files run one after another.
    fileParallelism: false,
  },
});
