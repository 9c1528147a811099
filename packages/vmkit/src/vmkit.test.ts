import { describe, expect, it } from 'vitest';
import { buildCpio } from './cpio.js';
import { parseDisks, guestSerial } from './guest-agent.js';
import { parseModulesDep } from './guest-image.js';
import { agentSocketFromXml, libvirtGuestXml } from './libvirt-guest.js';

/** Read back a newc archive: name → data, the way the kernel walks it. */
function readCpio(archive: Buffer): Map<string, { mode: number; data: Buffer }> {
  const out = new Map<string, { mode: number; data: Buffer }>();
  let at = 0;
  const align = (n: number) => (n + 3) & ~3;
  for (;;) {
    expect(archive.subarray(at, at + 6).toString('ascii')).toBe('070701');
    const field = (i: number) => parseInt(archive.subarray(at + 6 + i * 8, at + 14 + i * 8).toString('ascii'), 16);
    const mode = field(1);
    const size = field(6);
    const nameSize = field(11);
    const name = archive.subarray(at + 110, at + 110 + nameSize - 1).toString('utf8');
    const dataAt = align(at + 110 + nameSize);
    if (name === 'TRAILER!!!') return out;
    out.set(name, { mode, data: archive.subarray(dataAt, dataAt + size) });
    at = align(dataAt + size);
  }
}

describe('cpio', () => {
  it('writes newc entries the kernel can walk: dirs, files with modes, symlinks, padding', () => {
    const archive = buildCpio([
      { kind: 'dir', path: 'bin' },
      { kind: 'file', path: '/init', data: '#!/bin/sh\n', mode: 0o755 },
      { kind: 'file', path: 'bin/x', data: Buffer.from([1, 2, 3]) },
      { kind: 'symlink', path: 'bin/sh', target: 'busybox' },
    ]);
    expect(archive.length % 4).toBe(0);
    const entries = readCpio(archive);
    expect(entries.get('bin')?.mode).toBe(0o040755);
    expect(entries.get('init')?.mode).toBe(0o100755);
    expect(entries.get('init')?.data.toString()).toBe('#!/bin/sh\n');
    expect([...(entries.get('bin/x')?.data ?? [])]).toEqual([1, 2, 3]);
    expect(entries.get('bin/sh')?.mode).toBe(0o120777);
    expect(entries.get('bin/sh')?.data.toString()).toBe('busybox');
  });
});

describe('modules.dep', () => {
  it('maps each module to its dependencies', () => {
    const deps = parseModulesDep('kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio_ring.ko:\n');
    expect(deps.get('kernel/drivers/block/virtio_blk.ko')).toEqual(['kernel/drivers/virtio/virtio.ko', 'kernel/drivers/virtio/virtio_ring.ko']);
    expect(deps.get('kernel/drivers/virtio/virtio_ring.ko')).toEqual([]);
  });
});

describe('guest agent output', () => {
  it('parses the disks listing and cuts serials to the 20 bytes virtio passes', () => {
    expect(parseDisks('vda|11111111-2222-3333-4|131072|0\nvdb||2048|1\n')).toEqual([
      { name: 'vda', serial: '11111111-2222-3333-4', sizeBytes: 67108864, readOnly: false },
      { name: 'vdb', serial: '', sizeBytes: 1048576, readOnly: true },
    ]);
    expect(guestSerial('11111111-2222-3333-4444-555555555555')).toBe('11111111-2222-3333-4');
  });
});

describe('libvirt domain XML', () => {
  it('asks for ACPI (PCI hot-plug) and finds the agent socket libvirt chose', () => {
    const xml = libvirtGuestXml('g1', { kernel: '/k', initrd: '/i', cmdline: 'console=ttyS0', kernelVersion: 'v' }, '/tmp/c.log');
    expect(xml).toContain('<features><acpi/></features>');
    const live = `<channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-1-g1/org.berth.agent'/>
      <target type='virtio' name='org.berth.agent' state='disconnected'/>
    </channel>`;
    expect(agentSocketFromXml(live)).toBe('/var/lib/libvirt/qemu/channel/target/domain-1-g1/org.berth.agent');
  });
});
