// `@berth/core/zod`, as built: zod inside core's bundle, the one copy every berth package imports
// (packages/core/src/zod.ts). A third-party plugin may still import `zod` by name and get a second
// copy: the README says that works, and this is where it is shown.
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { BerthError, parseWith } from '@berth/core';
import { z } from '@berth/core/zod';
// The second copy on purpose: what a plugin that lists `zod` in its own dependencies loads.
// eslint-disable-next-line no-restricted-imports
import { z as pluginZ } from 'zod';

describe('@berth/core/zod', () => {
  it('is zod inside core\'s bundle, not the zod package', async () => {
    const file = fileURLToPath(import.meta.resolve('@berth/core/zod'));
    expect(file).toMatch(/[\\/]packages[\\/]core[\\/]dist[\\/]zod\.js$|[\\/]@berth[\\/]core[\\/]dist[\\/]zod\.js$/);
    // Not the package's copy: two copies are two `ZodType` classes.
    expect(z.ZodType).not.toBe(pluginZ.ZodType);
    // The bundle carries no locale but English (scripts/bundle.mjs, englishOnly).
    expect(Object.keys(z.locales)).toEqual(['en']);
    expect(z.string().safeParse(1).error?.issues[0]?.message).toBe('Invalid input: expected string, received number');
    // Nothing core's entry points load imports the zod package by name.
    const dist = dirname(file);
    const loaded = (await readdir(dist)).filter((name) => /^(index|errors|zod|core-chunk-.*)\.js$/.test(name));
    expect(loaded).toContain('zod.js');
    for (const name of loaded) expect(await readFile(join(dist, name), 'utf8'), name).not.toMatch(/from\s*["']zod(\/[^"']*)?["']/);
  });

  it('composes and parses with a plugin\'s own copy of zod, errors included', () => {
    const pluginOptions = pluginZ.object({ directory: pluginZ.string().min(1), sectors: pluginZ.number().int().default(4096) });
    // core's parse helper with a foreign schema: data, and a readable VALIDATION error.
    expect(parseWith(pluginOptions, { directory: '/srv' }, 'plugin options')).toEqual({ directory: '/srv', sectors: 4096 });
    expect(() => parseWith(pluginOptions, { directory: '' }, 'plugin options')).toThrow(BerthError);
    expect(() => parseWith(pluginOptions, { directory: '' }, 'plugin options')).toThrow(/invalid plugin options: directory: /);
    // A foreign schema inside one of berth's, and the other way round.
    const outer = z.object({ name: z.string(), options: pluginOptions });
    expect(outer.parse({ name: 'p', options: { directory: '/a' } })).toEqual({ name: 'p', options: { directory: '/a', sectors: 4096 } });
    const inner = pluginZ.object({ size: z.number().positive() });
    expect(inner.safeParse({ size: -1 }).success).toBe(false);
    // zod 4 recognises its errors across copies (its classes test a trait, not the constructor).
    const failed = pluginOptions.safeParse({});
    expect(failed.error).toBeInstanceOf(z.ZodError);
    expect(outer.safeParse({}).error).toBeInstanceOf(pluginZ.ZodError);
  });
});
