import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // templates/ holds the plugin `berth plugins new` writes; its own test runs in test/ (as root).
    include: ['src/**/*.test.ts'],
  },
});
