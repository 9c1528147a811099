import { describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { canonicalHost, formatPortal, parsePortal, portalKey, samePortal } from './portal.js';

describe('parsePortal', () => {
  it('reads host:port, a bare address (port 3260) and a tag', () => {
    expect(parsePortal('127.0.0.1:3260')).toEqual({ host: '127.0.0.1', port: 3260 });
    expect(parsePortal('10.0.0.5')).toEqual({ host: '10.0.0.5', port: 3260 });
    expect(parsePortal('127.0.0.1:3261,1')).toEqual({ host: '127.0.0.1', port: 3261, tpgt: 1 });
    expect(parsePortal('storage.example:3260')).toEqual({ host: 'storage.example', port: 3260 });
  });

  it('reads IPv6 with brackets, with and without a port, and bare', () => {
    expect(parsePortal('[fe80::1]:3260')).toEqual({ host: 'fe80::1', port: 3260 });
    expect(parsePortal('[2001:db8::10]')).toEqual({ host: '2001:db8::10', port: 3260 });
    expect(parsePortal('[2001:db8::10]:3262,4294967295')).toEqual({ host: '2001:db8::10', port: 3262, tpgt: -1 });
    expect(parsePortal('2001:db8::10')).toEqual({ host: '2001:db8::10', port: 3260 });
    expect(parsePortal('[fe80::1%eth0]:3260')).toEqual({ host: 'fe80::1%eth0', port: 3260 });
  });

  it('refuses what is not a portal, with a VALIDATION error', () => {
    for (const bad of ['', ':3260', '1.2.3.4:0', '1.2.3.4:65536', '1.2.3.4:x', '[fe80::1', '[fe80::1]x', 'a b:3260', '1.2.3.4:3260,x', 'zz::qq']) {
      const error = (() => {
        try {
          parsePortal(bad);
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      expect(error, bad).toBeInstanceOf(BerthError);
      expect((error as BerthError).code).toBe('VALIDATION');
    }
  });
});

describe('formatPortal', () => {
  it('brackets IPv6 only', () => {
    expect(formatPortal({ host: '127.0.0.1', port: 3260 })).toBe('127.0.0.1:3260');
    expect(formatPortal({ host: 'fe80::1', port: 3260 })).toBe('[fe80::1]:3260');
  });
});

describe('samePortal', () => {
  it('ignores brackets, case and IPv6 spelling, not the port', () => {
    expect(samePortal(parsePortal('[FE80:0:0::1]:3260'), { host: 'fe80::1', port: 3260 })).toBe(true);
    expect(samePortal(parsePortal('[2001:db8:0:0:0:0:0:10]'), parsePortal('[2001:db8::10]:3260'))).toBe(true);
    expect(samePortal(parsePortal('127.0.0.1'), parsePortal('127.0.0.1:3260'))).toBe(true);
    expect(samePortal(parsePortal('127.0.0.1:3260'), parsePortal('127.0.0.1:3261'))).toBe(false);
    expect(samePortal(parsePortal('127.0.0.1:3260'), parsePortal('127.0.0.2:3260'))).toBe(false);
  });

  it('reads an IPv4-mapped IPv6 address as its IPv4 address', () => {
    expect(canonicalHost('::ffff:127.0.0.1')).toBe('127.0.0.1');
    expect(samePortal({ host: '::ffff:10.1.2.3', port: 3260 }, { host: '10.1.2.3', port: 3260 })).toBe(true);
    expect(portalKey({ host: '[::FFFF:10.1.2.3]', port: 3260 })).toBe('10.1.2.3:3260');
  });
});
