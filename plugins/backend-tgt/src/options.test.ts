import { describe, expect, it } from 'vitest';
import { tgtadmTargetParams, zTgtBackendOptions } from './options.js';

describe('tgt backend options', () => {
  it('has the documented defaults', () => {
    expect(zTgtBackendOptions.parse({})).toEqual({
      portals: ['127.0.0.1:3260'],
      iqnPrefix: 'iqn.2026-11.io.berth',
      manageDaemon: true,
      controlPort: 7,
      chap: true,
      mutualChap: false,
      advertise: 'all',
      startTimeoutMs: 10_000,
      sessionParams: { maxRecvDataSegmentLength: 262_144, maxXmitDataSegmentLength: 262_144, firstBurstLength: 262_144, maxBurstLength: 1_048_576, initialR2T: false },
    });
  });

  it('session parameters: tgtadm names them; a first burst above the burst length is refused', () => {
    expect(tgtadmTargetParams(zTgtBackendOptions.parse({ sessionParams: { initialR2T: true } }).sessionParams)).toEqual({
      MaxRecvDataSegmentLength: '262144',
      MaxXmitDataSegmentLength: '262144',
      FirstBurstLength: '262144',
      MaxBurstLength: '1048576',
      InitialR2T: 'Yes',
    });
    expect(zTgtBackendOptions.safeParse({ sessionParams: { firstBurstLength: 2_097_152 } }).success).toBe(false);
  });

  it('normalises portals: a bare address gets port 3260, IPv6 gets brackets', () => {
    expect(zTgtBackendOptions.parse({ portals: ['127.0.0.2', '[::1]:3261', '10.0.0.1:3262'] }).portals).toEqual([
      '127.0.0.2:3260',
      '[::1]:3261',
      '10.0.0.1:3262',
    ]);
  });

  it('refuses host names, bad ports, duplicates and an empty list', () => {
    for (const portals of [['storage.example:3260'], ['127.0.0.1:99999'], ['127.0.0.1:3260', '127.0.0.1'], [], ['127.0.0.1:3260,evil=1']]) {
      expect(zTgtBackendOptions.safeParse({ portals }).success, JSON.stringify(portals)).toBe(false);
    }
  });

  it('refuses IQN prefixes that are not IQNs or hold a comma (tgtadm would read a parameter)', () => {
    for (const iqnPrefix of ['berth', 'iqn.2026-11.io.berth,x=1', 'iqn.2026-11.io.berth:a b', 'eui.02004567A425678D']) {
      expect(zTgtBackendOptions.safeParse({ iqnPrefix }).success, iqnPrefix).toBe(false);
    }
    expect(zTgtBackendOptions.parse({ iqnPrefix: 'iqn.2026-11.io.example:pool-1' }).iqnPrefix).toBe('iqn.2026-11.io.example:pool-1');
  });

  it('refuses mutual CHAP without CHAP', () => {
    expect(zTgtBackendOptions.safeParse({ chap: false, mutualChap: true }).success).toBe(false);
    expect(zTgtBackendOptions.safeParse({ chap: true, mutualChap: true }).success).toBe(true);
  });
});
