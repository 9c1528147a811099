import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { errnoOf, isMissing } from './errors.js';

describe('errnoOf', () => {
  it("gives a Node system error's code", async () => {
    const error: unknown = await readFile('/nonexistent/berth-errno-test').catch((e: unknown) => e);
    expect(errnoOf(error)).toBe('ENOENT');
    expect(errnoOf(Object.assign(new Error('taken'), { code: 'EEXIST' }))).toBe('EEXIST');
  });

  it('gives undefined for anything without a string code', () => {
    expect(errnoOf(new Error('plain'))).toBeUndefined();
    expect(errnoOf(Object.assign(new Error('numeric'), { code: 5 }))).toBeUndefined();
    expect(errnoOf({ code: 'ENOENT' })).toBeUndefined();
    expect(errnoOf('ENOENT')).toBeUndefined();
    expect(errnoOf(undefined)).toBeUndefined();
    expect(errnoOf(null)).toBeUndefined();
  });
});

describe('isMissing', () => {
  it('is ENOENT or ENOTDIR, nothing else', () => {
    expect(isMissing(Object.assign(new Error('gone'), { code: 'ENOENT' }))).toBe(true);
    expect(isMissing(Object.assign(new Error('a file on the way'), { code: 'ENOTDIR' }))).toBe(true);
    expect(isMissing(Object.assign(new Error('denied'), { code: 'EACCES' }))).toBe(false);
    expect(isMissing(new Error('plain'))).toBe(false);
    expect(isMissing(undefined)).toBe(false);
  });
});
