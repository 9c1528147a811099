import { describe, expect, it } from 'vitest';
import { attachmentsOnSimulatedHost, simulatedHostInUseError } from './simulate.js';

describe('simulate stop while attachments go through the simulated host', () => {
  const volumes = [
    { id: 'v-1', name: 'data1' },
    { id: 'v-2', name: 'data2' },
  ];

  it('lists the attachments whose recorded host root is the simulated host (not the machine, not detached)', () => {
    const uses = attachmentsOnSimulatedHost(
      [
        { id: 'a-1', volumeId: 'v-1', status: 'attached', transport: 'iscsi', hostRoot: '/var/lib/berth/simhost/' },
        { id: 'a-2', volumeId: 'v-2', status: 'attached', transport: 'loop', hostRoot: '/' },
        { id: 'a-3', volumeId: 'v-2', status: 'detached', transport: 'iscsi', hostRoot: '/var/lib/berth/simhost' },
        { id: 'a-4', volumeId: 'v-3', status: 'error_detaching', transport: 'iscsi-multipath', hostRoot: '/var/lib/berth/simhost' },
        { id: 'a-5', volumeId: 'v-1', status: 'attached', transport: 'iscsi', hostRoot: null },
      ],
      volumes,
      '/var/lib/berth/simhost',
    );
    expect(uses).toEqual(['volume data1 (attachment a-1, attached, transport iscsi)', 'volume v-3 (attachment a-4, error_detaching, transport iscsi-multipath)']);
  });

  it('is refused with CONFLICT listing them, hinting at detach or --force', () => {
    const error = simulatedHostInUseError(['volume data1 (attachment a-1, attached, transport iscsi)'], '/sim');
    expect(error.code).toBe('CONFLICT');
    expect(error.message).toBe('not stopping the simulated host at /sim: an attachment goes through it —\n  volume data1 (attachment a-1, attached, transport iscsi)');
    expect(error.hint).toMatch(/berth detach VOLUME --simulate.*berth simulate stop --force/);
  });
});
