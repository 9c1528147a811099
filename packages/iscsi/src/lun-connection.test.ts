import { describe, expect, it } from 'vitest';
import { BerthError, redactConnectionInfo, type ConnectionInfo } from '@berth/core';
import { lunKey, parseIscsiConnection, secretsOfTarget, targetKey } from './lun-connection.js';

const IQN = 'iqn.2026-01.test.berth:vol1';

function info(data: Record<string, unknown>, type = 'iscsi'): ConnectionInfo {
  return { driver_volume_type: type, data } as ConnectionInfo;
}

function failure(connection: ConnectionInfo): BerthError {
  try {
    parseIscsiConnection(connection);
  } catch (error) {
    if (BerthError.is(error)) return error;
    throw error;
  }
  throw new Error('expected a validation error');
}

describe('parseIscsiConnection', () => {
  it('reads Cinder\'s keys: portal, IQN, LUN, CHAP and mutual CHAP', () => {
    const target = parseIscsiConnection(
      info({
        target_portal: '127.0.0.1:3260',
        target_iqn: IQN,
        target_lun: 1,
        auth_method: 'CHAP',
        auth_username: 'user',
        auth_password: 'pw-1',
        auth_username_in: 'tgt',
        auth_password_in: 'pw-2',
        volume_id: 'x',
      }),
    );
    expect(target).toMatchObject({ iqn: IQN, portal: { host: '127.0.0.1', port: 3260 }, portalText: '127.0.0.1:3260', lun: 1, kernelLun: 1 });
    expect(target.auth).toEqual({ username: 'user', password: 'pw-1', usernameIn: 'tgt', passwordIn: 'pw-2' });
    expect(secretsOfTarget(target)).toEqual(['pw-1', 'pw-2']);
  });

  it('takes a bare address as port 3260 and writes IPv6 in brackets', () => {
    expect(parseIscsiConnection(info({ target_portal: '10.0.0.5', target_iqn: IQN, target_lun: 0 })).portalText).toBe('10.0.0.5:3260');
    expect(parseIscsiConnection(info({ target_portal: '[fd00::5]:3261', target_iqn: IQN, target_lun: 0 })).portalText).toBe('[fd00::5]:3261');
  });

  it('maps LUNs to the kernel\'s numbers under flat addressing (os-brick\'s addressing_mode)', () => {
    const base = { target_portal: '127.0.0.1:3260', target_iqn: IQN };
    expect(parseIscsiConnection(info({ ...base, target_lun: 300 })).kernelLun).toBe(300);
    expect(parseIscsiConnection(info({ ...base, target_lun: 300, addressing_mode: 'SAM2' })).kernelLun).toBe(16684);
    expect(parseIscsiConnection(info({ ...base, target_lun: 3, addressing_mode: 'SAM2' })).kernelLun).toBe(3);
    expect(parseIscsiConnection(info({ ...base, target_lun: 3, addressing_mode: 'SAM3-flat' })).kernelLun).toBe(16387);
  });

  it('treats auth_method None as no CHAP', () => {
    const target = parseIscsiConnection(info({ target_portal: '127.0.0.1:3260', target_iqn: IQN, target_lun: 2, auth_method: 'None' }));
    expect(target.auth).toBeUndefined();
  });

  it('names every missing key at once', () => {
    const error = failure(info({ auth_method: 'CHAP' }));
    expect(error.code).toBe('VALIDATION');
    expect(error.message).toContain('data.target_portal is missing');
    expect(error.message).toContain('data.target_iqn is missing');
    expect(error.message).toContain('data.target_lun is missing');
    expect(error.hint).toMatch(/initialize_connection/);
  });

  it('refuses CHAP without its password, and half of mutual CHAP, without echoing any value', () => {
    const error = failure(
      info({ target_portal: '127.0.0.1:3260', target_iqn: IQN, target_lun: 1, auth_method: 'CHAP', auth_username: 'user', auth_password_in: 'secret-in' }),
    );
    expect(error.message).toContain('data.auth_password is missing (auth_method is CHAP)');
    expect(error.message).toContain('auth_username_in and data.auth_password_in go together');
    expect(JSON.stringify({ m: error.message, d: error.details })).not.toContain('secret-in');
  });

  it('refuses a password with a newline (it would write a second key into the record) without echoing it', () => {
    const error = failure(
      info({ target_portal: '127.0.0.1:3260', target_iqn: IQN, target_lun: 1, auth_method: 'CHAP', auth_username: 'u', auth_password: 'a\nnode.startup = manual' }),
    );
    expect(error.message).toContain('data.auth_password');
    expect(error.message).not.toContain('node.startup');
  });

  it('refuses a wrong type, a bad IQN, a bad portal and a negative LUN', () => {
    const error = failure(info({ target_portal: 'host:99999', target_iqn: 'vol1', target_lun: -1 }, 'file'));
    expect(error.message).toContain('driver_volume_type "file"');
    expect(error.message).toContain('data.target_iqn');
    expect(error.message).toContain('data.target_lun must not be negative');
    const portal = failure(info({ target_portal: 'host:99999', target_iqn: IQN, target_lun: 1 }));
    expect(portal.message).toContain('data.target_portal');
    expect(failure(info({ target_portal: '127.0.0.1', target_iqn: IQN, target_lun: '1' })).message).toContain('data.target_lun must be a whole number');
  });

  it('refuses credentials without an auth method', () => {
    expect(failure(info({ target_portal: '127.0.0.1', target_iqn: IQN, target_lun: 1, auth_username: 'u', auth_password: 'p' })).message).toContain(
      'data.auth_method is missing',
    );
  });

  it('for a disconnect, reads the LUN from the connection_info berth stored (its passwords removed)', () => {
    const stored = redactConnectionInfo(
      info({ target_portal: '127.0.0.1:3260', target_iqn: IQN, target_lun: 4, auth_method: 'CHAP', auth_username: 'u', auth_password: 'p', auth_username_in: 't', auth_password_in: 'q' }),
    );
    expect(() => parseIscsiConnection(stored)).toThrow(/auth_password is missing/);
    const target = parseIscsiConnection(stored, { purpose: 'locate' });
    expect(target).toMatchObject({ iqn: IQN, lun: 4, kernelLun: 4, portalText: '127.0.0.1:3260' });
    expect(target.auth).toBeUndefined();
    expect(() => parseIscsiConnection(info({ target_iqn: IQN, target_lun: 4 }), { purpose: 'locate' })).toThrow(/target_portal is missing/);
  });

  it('keys locks by target and by LUN, whatever the portal spelling', () => {
    const a = parseIscsiConnection(info({ target_portal: '[fd00:0::5]:3260', target_iqn: IQN, target_lun: 1 }));
    const b = parseIscsiConnection(info({ target_portal: '[fd00::5]', target_iqn: IQN, target_lun: 2 }));
    expect(targetKey(a)).toBe(targetKey(b));
    expect(lunKey(a)).not.toBe(lunKey(b));
  });
});
