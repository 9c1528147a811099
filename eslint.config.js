// One lint config for every package (run per package by turbo: `npm run lint`).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['**/dist/**', '**/node_modules/**', '**/*.d.ts', 'test/fixtures/**', '**/*.py'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      // Unused names are errors, except the ones that say they are unused on purpose.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      '@typescript-eslint/no-explicit-any': 'error',
      // Input validation rejects control characters on purpose (names, IQNs, CHAP users).
      'no-control-regex': 'off',
      // Shells are not allowed anywhere: commands go through @berth/host with argument arrays.
      'no-restricted-syntax': [
        'error',
        { selector: "Property[key.name='shell'][value.value=true]", message: 'never a shell: pass an argument array to @berth/host' },
      ],
    },
  },
  {
    // One zod per process, in one file: berth's packages import it from core (packages/core/src/zod.ts).
    ignores: ['packages/core/src/**'],
    rules: {
      'no-restricted-imports': ['error', { paths: [{ name: 'zod', message: "import zod from '@berth/core/zod': one copy, one file (packages/core/src/zod.ts)" }], patterns: [{ group: ['zod/*'], message: "import zod from '@berth/core/zod'" }] }],
    },
  },
  {
    files: ['**/*.mjs', '**/*.js'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly', Buffer: 'readonly', URL: 'readonly' } },
  },
);
