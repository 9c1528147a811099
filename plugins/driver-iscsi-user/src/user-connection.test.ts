import { describe, expect, it } from 'vitest';
import { BerthError, type ConnectionInfo } from '@berth/core';
import { wireLun } from '@berth/qemu';
import plugin, { PRIORITY } from './index.js';
import { exportNames, parseUserConnection } from './user-connection.js';

const base: ConnectionInfo = {
  driver_volume_type: 'iscsi',
  data: { target_portal: '127.0.0.1:3260', target_iqn: 'iqn.2026-11.io.berth:volume-1', target_lun: 1, auth_method: 'CHAP', auth_username: 'u', auth_password: 'p4ss' },
};

function problem(connection: ConnectionInfo): BerthError {
  try {
    parseUserConnection(connection, 'connect');
  } catch (error) {
    if (BerthError.is(error)) return error;
  }
  throw new Error('expected a VALIDATION error');
}

describe('parseUserConnection', () => {
  it('reads the LUN, the portals in order without repeats, CHAP and the access mode', () => {
    const lun = parseUserConnection(
      { ...base, data: { ...base.data, target_portals: ['127.0.0.2:3260', '127.0.0.1:3260', '[::1]:3260'], access_mode: 'ro', auth_username_in: 't', auth_password_in: 'q' } },
      'connect',
    );
    expect(lun).toEqual({
      iqn: 'iqn.2026-11.io.berth:volume-1',
      lun: 1,
      portals: ['127.0.0.1:3260', '127.0.0.2:3260', '[::1]:3260'],
      readOnly: true,
      auth: { username: 'u', password: 'p4ss', usernameIn: 't', passwordIn: 'q' },
    });
  });

  it('locates a stored connection without its passwords', () => {
    const { auth_password: _p, ...stored } = base.data;
    expect(parseUserConnection({ ...base, data: stored }, 'locate').auth).toBeUndefined();
  });

  it('names every problem and never a value', () => {
    const error = problem({ driver_volume_type: 'file', data: { target_portal: 'a b', target_iqn: 'nope', target_lun: -1, auth_method: 'CHAP', auth_password: 'secret\nvalue' } });
    expect(error.code).toBe('VALIDATION');
    expect(error.message).toMatch(/not iscsi/);
    expect(error.message).toMatch(/target_iqn/);
    expect(error.message).toMatch(/target_lun/);
    expect(error.message).not.toContain('secret');
    expect(problem({ ...base, data: { ...base.data, auth_username_in: 'only-one' } }).message).toMatch(/go together/);
  });
});

describe('names and numbers', () => {
  it('gives one LUN the same short QMP names every time, another LUN others', () => {
    const a = exportNames('iqn.2026-11.io.berth:volume-1', 1);
    expect(exportNames('iqn.2026-11.io.berth:volume-1', 1)).toEqual(a);
    expect(exportNames('iqn.2026-11.io.berth:volume-1', 2).key).not.toBe(a.key);
    for (const name of [a.node, a.exportId, a.secretId]) expect(name.length).toBeLessThanOrEqual(31);
  });

  it('puts LUNs above 255 on the wire in flat addressing', () => {
    expect(wireLun(1)).toBe(1);
    expect(wireLun(300)).toBe(0x4000 | 300);
    expect(() => wireLun(0x4000)).toThrow(/out of range/);
  });

  it('registers the iscsi-user transport for iscsi, between the kernel driver and multipath', () => {
    const names: string[] = [];
    plugin.register({ transport: (name) => names.push(name), backend: () => undefined, consumer: () => undefined });
    expect(names).toEqual(['iscsi-user']);
    expect(PRIORITY).toBeGreaterThan(0);
    expect(PRIORITY).toBeLessThan(10);
  });
});
