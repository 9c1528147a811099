import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // One real TCG guest per suite: its boot takes 6 s on a quiet machine and far more on a loaded one.
    testTimeout: 240_000,
    hookTimeout: 300_000,
  },
});
