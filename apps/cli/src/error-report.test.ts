import { describe, expect, it } from 'vitest';
import { BerthError, EXIT_CODES } from '@berth/core';
import { errorJson, errorLines, reportError, UNEXPECTED_EXIT_CODE } from './error-report.js';

describe('reportError', () => {
  it('gives a BerthError its own exit code, message and hint', () => {
    const report = reportError(new BerthError('NOT_FOUND', 'no volume "x"', { hint: 'list volumes with `berth volume list`' }));
    expect(report).toEqual({ code: 'NOT_FOUND', message: 'no volume "x"', hint: 'list volumes with `berth volume list`', exitCode: EXIT_CODES.NOT_FOUND });
    expect(errorLines(report)).toEqual(['Error: no volume "x"', 'Hint: list volumes with `berth volume list`']);
    expect(errorJson(report)).toEqual({ error: { code: 'NOT_FOUND', message: 'no volume "x"', hint: 'list volumes with `berth volume list`' } });
  });

  it('maps every code to a distinct exit code other than 0 and 1', () => {
    const codes = Object.keys(EXIT_CODES) as Array<keyof typeof EXIT_CODES>;
    const exits = codes.map((code) => reportError(new BerthError(code, 'x')).exitCode);
    expect(new Set(exits).size).toBe(codes.length);
    expect(exits.every((exit) => exit > 1)).toBe(true);
  });

  it('reads oclif usage errors as VALIDATION without colours or the help footer', () => {
    const error = Object.assign(new Error('\u001B[31mNonexistent flag: --colour\u001B[39m\nSee more help with --help'), {
      oclif: { exit: 2 },
      parse: {},
    });
    const report = reportError(error, { commandId: 'volume:list' });
    expect(report).toMatchObject({ code: 'VALIDATION', message: 'unknown flag --colour', exitCode: EXIT_CODES.VALIDATION });
    expect(report.hint).toBe('see `berth volume list --help`');
  });

  it("words oclif's missing flags and arguments as berth does, with the command's example as the hint", () => {
    const flag = Object.assign(new Error('The following error occurred:\n  \u001B[2mMissing required flag name\u001B[22m\nSee more help with --help'), { oclif: { exit: 2 }, parse: {} });
    const report = reportError(flag, { commandId: 'volume:create', example: 'berth volume create --size 1GiB --name data1' });
    expect(report.message).toBe('missing required flag --name');
    expect(report.hint).toBe('for example `berth volume create --size 1GiB --name data1`; more in `berth volume create --help`');
    const arg = Object.assign(new Error('Missing 1 required arg:\nvolume  Volume name or id\nSee more help with --help'), {
      oclif: { exit: 2 },
      parse: {},
      args: [{ name: 'volume', description: 'Volume name or id' }],
    });
    expect(reportError(arg).message).toBe('missing argument VOLUME (Volume name or id)');
  });

  it('turns anything else into a short unexpected error with exit 1 and no stack', () => {
    const report = reportError(new TypeError('cannot read properties of undefined'));
    expect(report.code).toBe('UNEXPECTED');
    expect(report.exitCode).toBe(UNEXPECTED_EXIT_CODE);
    expect(report.stack).toBeUndefined();
    expect(errorLines(report).join('\n')).not.toMatch(/\n\s+at /);
  });

  it('gives a full disk and a read-only directory that escaped as Node errors their own message and hint', () => {
    const full = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', path: '/var/lib/berth/x' });
    expect(reportError(full)).toMatchObject({ code: 'HOST_UNSUPPORTED', message: 'the disk is full (/var/lib/berth/x)', exitCode: EXIT_CODES.HOST_UNSUPPORTED });
    expect(reportError(full).hint).toMatch(/df -h/);
    const readOnly = Object.assign(new Error('EROFS: read-only file system, mkdir'), { code: 'EROFS', path: '/var/lib/berth' });
    expect(reportError(readOnly)).toMatchObject({ code: 'PERMISSION_DENIED', exitCode: EXIT_CODES.PERMISSION_DENIED });
    expect(reportError(readOnly).message).toMatch(/read-only/);
  });

  it('adds the stack only when debugging', () => {
    expect(reportError(new Error('boom'), { debug: true }).stack).toContain('boom');
  });
});
