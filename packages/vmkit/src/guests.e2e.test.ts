import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCommandRunner } from '@berth/host';
import { bootLibvirtGuest, type LibvirtGuest } from './libvirt-guest.js';
import { bootQemuGuest, type QemuGuest } from './qemu-guest.js';
import { READY_MARKER } from './guest-scripts.js';

const runner = createCommandRunner();

describe('a QEMU guest', () => {
  let guest: QemuGuest | undefined;
  beforeAll(async () => {
    guest = await bootQemuGuest({ runner });
  });
  afterAll(async () => {
    await guest?.stop();
  });

  it('boots the Debian kernel with the busybox initramfs and answers on the agent channel', async () => {
    const g = guest!;
    expect(await g.consoleLog()).toContain(READY_MARKER);
    expect((await g.agent.check('uname -r')).trim()).toMatch(/^\d+\.\d+/);
    expect(await g.agent.disks()).toEqual([]);
    const failed = await g.agent.run('false');
    expect(failed.exitCode).toBe(1);
  });
});

describe('a libvirt guest', () => {
  let guest: LibvirtGuest | undefined;
  beforeAll(async () => {
    guest = await bootLibvirtGuest({ runner });
  });
  afterAll(async () => {
    const domain = guest?.domain;
    await guest?.stop();
    if (domain) {
      const list = await runner.run('virsh', ['-c', 'qemu:///system', 'list', '--all', '--name']);
      expect(list.stdout).not.toContain(domain);
    }
  });

  it('boots as a transient domain and answers on the agent channel', async () => {
    const g = guest!;
    expect(await g.consoleLog()).toContain(READY_MARKER);
    expect(await g.agent.disks()).toEqual([]);
  });
});
