import { describe, expect, it } from 'vitest';
import { BerthError, redactConnectionInfo, type ConnectionInfo } from '@berth/core';
import { lunKey, parseMultipathConnection, secretsOfVolume, targetKey, volumeKey } from './multipath-connection.js';

const IQN = 'iqn.2026-01.test.berth:vol1';
const IQN2 = 'iqn.2026-01.test.berth:vol2';
const P1 = '127.0.0.1:3260';
const P2 = '127.0.0.2:3260';
const PROTOCOLS = ['iscsi'];

function info(data: Record<string, unknown>, type = 'iscsi'): ConnectionInfo {
  return { driver_volume_type: type, data } as ConnectionInfo;
}

function failure(connection: ConnectionInfo, purpose: 'connect' | 'locate' = 'connect'): BerthError {
  try {
    parseMultipathConnection(connection, { protocols: PROTOCOLS, purpose });
  } catch (error) {
    if (BerthError.is(error)) return error;
    throw error;
  }
  throw new Error('expected a validation error');
}

describe('parseMultipathConnection', () => {
  it('reads os-brick\'s lists: one path per portal, the scalar keys as the primary path', () => {
    const volume = parseMultipathConnection(
      info({
        target_portal: P1,
        target_iqn: IQN,
        target_lun: 1,
        target_portals: [P1, P2],
        target_iqns: [IQN, IQN],
        target_luns: [1, 1],
        auth_method: 'CHAP',
        auth_username: 'u',
        auth_password: 'pw-1',
        auth_username_in: 't',
        auth_password_in: 'pw-2',
      }),
      { protocols: PROTOCOLS },
    );
    expect(volume.primary).toMatchObject({ iqn: IQN, portalText: P1, lun: 1, kernelLun: 1 });
    expect(volume.listed?.map((p) => [p.portalText, p.iqn, p.lun])).toEqual([
      [P1, IQN, 1],
      [P2, IQN, 1],
    ]);
    expect(volume.auth).toEqual({ username: 'u', password: 'pw-1', usernameIn: 't', passwordIn: 'pw-2' });
    expect(secretsOfVolume(volume)).toEqual(['pw-1', 'pw-2']);
  });

  it('uses target_iqn and target_lun for every portal when the lists of IQNs and LUNs are absent', () => {
    const volume = parseMultipathConnection(info({ target_iqn: IQN, target_lun: 4, target_portals: [P1, P2, '[fd00::5]:3261'] }), { protocols: PROTOCOLS });
    expect(volume.listed?.map((p) => `${p.portalText} ${p.iqn} ${p.lun}`)).toEqual([`${P1} ${IQN} 4`, `${P2} ${IQN} 4`, `[fd00::5]:3261 ${IQN} 4`]);
    // No target_portal: the first listed path is the primary one.
    expect(volume.primary.portalText).toBe(P1);
  });

  it('keeps a portal listed twice as one path, whatever its spelling', () => {
    const volume = parseMultipathConnection(info({ target_iqn: IQN, target_lun: 1, target_portals: [P1, '127.0.0.1', P2] }), { protocols: PROTOCOLS });
    expect(volume.listed?.map((p) => p.portalText)).toEqual([P1, P2]);
  });

  it('discovers when target_portals is absent: only the primary path is known', () => {
    const volume = parseMultipathConnection(
      info({ target_portal: P1, target_iqn: IQN, target_lun: 1, discovery_auth_method: 'CHAP', discovery_auth_username: 'd', discovery_auth_password: 'dpw' }),
      { protocols: PROTOCOLS },
    );
    expect(volume.listed).toBeUndefined();
    expect(volume.primary.portalText).toBe(P1);
    expect(volume.discoveryAuth).toEqual({ username: 'd', password: 'dpw' });
  });

  it('maps LUNs to the kernel\'s numbers under flat addressing', () => {
    const volume = parseMultipathConnection(info({ target_iqn: IQN, target_portals: [P1, P2], target_luns: [300, 300], addressing_mode: 'SAM2' }), { protocols: PROTOCOLS });
    expect(volume.listed?.map((p) => p.kernelLun)).toEqual([16684, 16684]);
  });

  it('names every problem at once: list lengths, missing keys, a bad portal', () => {
    const error = failure(info({ target_portals: [P1, 'bad portal:x'], target_iqns: [IQN], target_luns: [1, 1, 1] }));
    expect(error.code).toBe('VALIDATION');
    expect(error.message).toContain('data.target_iqns has 1 entries for 2 target_portals');
    expect(error.message).toContain('data.target_luns has 3 entries for 2 target_portals');
    const missing = failure(info({}));
    expect(missing.message).toContain('data.target_portal is missing');
    expect(missing.message).toContain('data.target_iqn is missing');
    expect(missing.message).toContain('data.target_lun is missing');
    const portal = failure(info({ target_iqn: IQN, target_lun: 1, target_portals: [P1, 'a b:1'] }));
    expect(portal.message).toContain('data.target_portals.1');
    expect(failure(info({ target_portal: P1, target_iqn: IQN, target_lun: 1 }, 'rbd')).message).toContain('driver_volume_type "rbd"');
  });

  it('refuses CHAP without its password and never echoes a value', () => {
    const error = failure(info({ target_portal: P1, target_iqn: IQN, target_lun: 1, auth_method: 'CHAP', auth_username: 'user', auth_password_in: 'secret-in' }));
    expect(error.message).toContain('data.auth_password is missing (auth_method is CHAP)');
    expect(JSON.stringify({ m: error.message, d: error.details })).not.toContain('secret-in');
    const newline = failure(info({ target_portal: P1, target_iqn: IQN, target_lun: 1, auth_method: 'CHAP', auth_username: 'u', auth_password: 'a\nnode.startup = manual' }));
    expect(newline.message).toContain('data.auth_password');
    expect(newline.message).not.toContain('node.startup = manual');
  });

  it('reads the stored connection_info (passwords removed) for disconnect', () => {
    const stored = redactConnectionInfo(
      info({ target_portal: P1, target_iqn: IQN, target_lun: 1, target_portals: [P1, P2], target_iqns: [IQN, IQN], target_luns: [1, 1], auth_method: 'CHAP', auth_username: 'u', auth_password: 'pw' }),
    );
    expect(() => parseMultipathConnection(stored, { protocols: PROTOCOLS })).toThrow(/auth_password is missing/);
    const volume = parseMultipathConnection(stored, { protocols: PROTOCOLS, purpose: 'locate' });
    expect(volume.listed).toHaveLength(2);
    expect(volume.auth).toBeUndefined();
  });

  it('keys: one per target and portal, one per LUN, one per volume', () => {
    const a = parseMultipathConnection(info({ target_iqn: IQN, target_lun: 1, target_portals: [P1, P2] }), { protocols: PROTOCOLS });
    const b = parseMultipathConnection(info({ target_iqn: IQN2, target_lun: 1, target_portals: ['127.0.0.1', P2] }), { protocols: PROTOCOLS });
    const [a1, a2] = a.listed ?? [];
    const [b1] = b.listed ?? [];
    if (a1 === undefined || a2 === undefined || b1 === undefined) throw new Error('paths missing');
    expect(targetKey(a1)).not.toBe(targetKey(a2));
    expect(targetKey(a1)).not.toBe(targetKey(b1));
    expect(lunKey(a1)).toBe(`${targetKey(a1)}|1`);
    expect(volumeKey(a)).not.toBe(volumeKey(b));
  });
});
