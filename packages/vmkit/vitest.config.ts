import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // A TCG guest boots in 6 s on a quiet machine and several times that on a loaded one.
    testTimeout: 240_000,
    hookTimeout: 300_000,
  },
});
