import { describe, expect, it } from 'vitest';
import { fuseConnectionIn, fusectlMounted } from './fuse-mounts.js';

const MOUNTINFO = [
  '26 1 0:22 / / rw,relatime - overlay overlay rw',
  '44 26 0:39 / /tmp/d/mounts/a.fuse rw,nosuid,nodev,relatime - fuse /dev/fuse rw,user_id=0,group_id=0',
  '45 26 0:40 / /tmp/d/mounts/b\\040c.fuse rw,nosuid,nodev,relatime - fuse /dev/fuse rw,user_id=0,group_id=0',
  '46 26 7:3 / /tmp/d/mounts/x.fuse rw - ext4 /dev/loop3 rw',
  '47 44 0:52 / /tmp/d/mounts/a.fuse rw,nosuid,nodev,relatime - fuse /dev/fuse rw,user_id=0,group_id=0',
].join('\n');

describe('fuseConnectionIn (the FUSE connection number of a mount, from /proc/self/mountinfo)', () => {
  it('is the minor of the mount\'s device; the last of stacked mounts; escapes undone', () => {
    expect(fuseConnectionIn(MOUNTINFO, '/tmp/d/mounts/a.fuse')).toBe(52);
    expect(fuseConnectionIn(MOUNTINFO, '/tmp/d/mounts/b c.fuse')).toBe(40);
  });

  it('is undefined for a mount that is not FUSE, and for no mount', () => {
    expect(fuseConnectionIn(MOUNTINFO, '/tmp/d/mounts/x.fuse')).toBeUndefined();
    expect(fuseConnectionIn(MOUNTINFO, '/tmp/d/mounts/none.fuse')).toBeUndefined();
  });
});

describe('fusectlMounted (whether fusectl is mounted on /sys/fs/fuse/connections, from /proc/mounts)', () => {
  const procMounts = (...lines: string[]): { readFile: (p: string) => Promise<string> } => ({
    readFile: (p) => (p === '/proc/mounts' ? Promise.resolve([...lines, ''].join('\n')) : Promise.reject(new Error(`unexpected read of ${p}`))),
  });
  const root = 'overlay / overlay rw,relatime 0 0';

  it('is true when fusectl is mounted there', async () => {
    expect(await fusectlMounted(procMounts(root, 'fusectl /sys/fs/fuse/connections fusectl rw,nosuid,nodev,noexec,relatime 0 0'))).toBe(true);
  });

  it('is false when it is not, or something else is mounted there, or fusectl elsewhere', async () => {
    expect(await fusectlMounted(procMounts(root, '/dev/fuse /tmp/d/a.fuse fuse rw 0 0'))).toBe(false);
    expect(await fusectlMounted(procMounts(root, 'tmpfs /sys/fs/fuse/connections tmpfs rw 0 0'))).toBe(false);
    expect(await fusectlMounted(procMounts(root, 'fusectl /mnt/fusectl fusectl rw 0 0'))).toBe(false);
  });
});
