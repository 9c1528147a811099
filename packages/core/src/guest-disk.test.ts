import { describe, expect, it } from 'vitest';
import { virtioDiskName } from './guest-disk.js';

describe('virtioDiskName', () => {
  it('names virtio disks as Linux does: vda..vdz, then vdaa', () => {
    expect([0, 1, 25, 26, 27, 701, 702].map(virtioDiskName)).toEqual(['/dev/vda', '/dev/vdb', '/dev/vdz', '/dev/vdaa', '/dev/vdab', '/dev/vdzz', '/dev/vdaaa']);
  });
});
