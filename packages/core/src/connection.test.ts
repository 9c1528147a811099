import { describe, expect, it } from 'vitest';
import { connectorWithoutSecrets, recordWithoutSecrets, redactConnectionInfo, secretsOf, withAccessMode, zDevice, type ConnectionInfo } from './connection.js';

const exported: ConnectionInfo = { driver_volume_type: 'iscsi', data: { target_iqn: 'iqn.2026-01.test:v1', target_lun: 1, access_mode: 'rw' } };

describe('withAccessMode', () => {
  it('makes a read-only attachment connect read-only whatever the backend said', () => {
    const info = withAccessMode(exported, 'ro');
    expect(info.data.access_mode).toBe('ro');
    expect(info.data.target_iqn).toBe('iqn.2026-01.test:v1');
    expect(exported.data.access_mode).toBe('rw');
  });

  it('leaves a read-write attachment with what the backend said', () => {
    expect(withAccessMode(exported, 'rw')).toEqual(exported);
    const silent: ConnectionInfo = { driver_volume_type: 'local', data: { device_path: '/tmp/v' } };
    expect(withAccessMode(silent, 'rw').data.access_mode).toBeUndefined();
  });
});

describe('zDevice', () => {
  it('reads a device an older berth stored with its resolved `realPath`: the key is dropped, the path kept as the transport named it', () => {
    const stored = { path: '/dev/sdb', type: 'block', scsi_wwn: '36001405abc', realPath: '/var/lib/berth/simhost/dev/sdb' };
    expect(zDevice.parse(stored)).toEqual({ path: '/dev/sdb', type: 'block', scsi_wwn: '36001405abc' });
  });
});

describe('secret-named keys', () => {
  it('are dropped in any case and under other names that say password or secret, at any depth; other keys stay', () => {
    const result = recordWithoutSecrets({ device: { path: '/dev/sda', meta: { 'node.session.auth.password': 'X', 'password-secret': 'sec0', portal: '127.0.0.1:3260' } }, list: [{ Auth_Password: 'Y', lun: 1 }] });
    expect(result).toEqual({ device: { path: '/dev/sda', meta: { portal: '127.0.0.1:3260' } }, list: [{ lun: 1 }] });
    expect(connectorWithoutSecrets({ host: 'h1', initiator: 'iqn.2026-01.test:h1', Auth_Password: 'Z' } as never)).toEqual({ host: 'h1', initiator: 'iqn.2026-01.test:h1' });
    const info: ConnectionInfo = { driver_volume_type: 'iscsi', data: { target_iqn: 'iqn.2026-01.test:v1', AUTH_PASSWORD: 'p1', auth_username: 'u' } };
    expect(redactConnectionInfo(info).data).toEqual({ target_iqn: 'iqn.2026-01.test:v1', auth_username: 'u' });
    expect(secretsOf(info)).toEqual(['p1']);
  });
});
