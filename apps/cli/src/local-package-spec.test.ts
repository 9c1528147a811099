import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { localPackageSpec } from './local-package-spec.js';

describe('localPackageSpec', () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-cli-spec-'));
  const tarball = join(dir, 'berth-plugin-x-1.0.0.tgz');
  writeFileSync(tarball, '');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('turns an existing path into a file: spec', () => {
    expect(localPackageSpec(tarball)).toBe(`file:${tarball}`);
    expect(localPackageSpec('./berth-plugin-x-1.0.0.tgz', dir)).toBe(`file:${tarball}`);
    expect(localPackageSpec('berth-plugin-x-1.0.0.tgz', dir)).toBe(`file:${tarball}`);
    expect(localPackageSpec('.', dir)).toBe(`file:${dir}`);
  });

  it('leaves package names, URLs and flags alone', () => {
    expect(localPackageSpec('berth-driver-foo', dir)).toBeUndefined();
    expect(localPackageSpec('@acme/berth-driver', dir)).toBeUndefined();
    expect(localPackageSpec('file:/x.tgz', dir)).toBeUndefined();
    expect(localPackageSpec('--force', dir)).toBeUndefined();
  });

  it('refuses a package directory without a name or with a version npm would mis-record (VALIDATION), before npm runs', () => {
    const pkg = (name: string, manifest: string): string => {
      const at = join(dir, name);
      mkdirSync(at, { recursive: true });
      writeFileSync(join(at, 'package.json'), manifest);
      return at;
    };
    expect(() => localPackageSpec(pkg('badversion', JSON.stringify({ name: 'berth-transport-x', version: 'not-a-version' })), dir)).toThrow(/version "not-a-version", which is not a semver version/);
    expect(() => localPackageSpec(pkg('noname', JSON.stringify({ version: '1.0.0' })), dir)).toThrow(expect.objectContaining({ code: 'VALIDATION' }));
    expect(() => localPackageSpec(pkg('notjson', '{'), dir)).toThrow(/is not valid JSON/);
    const good = pkg('good', JSON.stringify({ name: 'berth-transport-x', version: '1.0.0-rc.1' }));
    expect(localPackageSpec(good, dir)).toBe(`file:${good}`);
  });

  it('refuses a local path that does not exist (plugin-plugins took it for a GitHub repo and hung offline)', () => {
    expect(() => localPackageSpec('./missing.tgz', dir)).toThrow(/no such file or directory: .*missing\.tgz/);
    expect(() => localPackageSpec('/nonexistent/plugin', dir)).toThrow(expect.objectContaining({ code: 'VALIDATION' }));
  });
});
