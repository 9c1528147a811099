import { describe, expect, it } from 'vitest';
import { diskXml, freeVirtioTarget, parseDomainBlocks, parseDomainDisks } from './disk-xml.js';
import { parseDomblklist, virshFailed } from './virsh.js';

describe('disk XML', () => {
  it('is a block disk by the stable link, serial = volume id, alias, cache none + native io', () => {
    const xml = diskXml({ source: '/dev/berth/v1', target: 'vdb', serial: 'v1', alias: 'ua-berth-v1', readOnly: false, cache: 'none', discard: false });
    expect(xml).toBe(
      "<disk type='block' device='disk'>\n  <driver name='qemu' type='raw' cache='none' io='native'/>\n  <source dev='/dev/berth/v1'/>\n  <target dev='vdb' bus='virtio'/>\n  <serial>v1</serial>\n  <alias name='ua-berth-v1'/>\n</disk>\n",
    );
  });

  it('read-only, writeback cache (no native io), discard unmap, escaped text', () => {
    const xml = diskXml({ source: "/dev/a'b", target: 'vdc', serial: 'a<b', alias: 'ua-x', readOnly: true, cache: 'writeback', discard: true });
    expect(xml).toContain("<driver name='qemu' type='raw' cache='writeback' discard='unmap'/>");
    expect(xml).toContain('<readonly/>');
    expect(xml).toContain("<source dev='/dev/a&apos;b'/>");
    expect(xml).toContain('<serial>a&lt;b</serial>');
  });

  it('picks the first free vdX target', () => {
    expect(freeVirtioTarget([])).toBe('vda');
    expect(freeVirtioTarget(['vda', 'vdb', 'hda'])).toBe('vdc');
    expect(freeVirtioTarget(Array.from({ length: 26 }, (_, i) => `vd${String.fromCharCode(97 + i)}`))).toBe('vdaa');
  });
});

describe('domblklist --details', () => {
  it('parses libvirt 9.0 output (recorded), empty drives and an empty domain', () => {
    const recorded =
      ' Type    Device   Target   Source\n----------------------------------------------------------------------------\n block   disk     vdb      /dev/berth/11111111-2222-3333-4444-555555555555\n file    cdrom    sda      -\n\n';
    expect(parseDomblklist(recorded)).toEqual([
      { type: 'block', device: 'disk', target: 'vdb', source: '/dev/berth/11111111-2222-3333-4444-555555555555' },
      { type: 'file', device: 'cdrom', target: 'sda', source: undefined },
    ]);
    expect(parseDomblklist(' Type   Device   Target   Source\n----------------------------------\n\n')).toEqual([]);
  });
});

describe('live domain XML', () => {
  it('lists each disk by serial, alias and target; a domain with an id runs, one without does not', () => {
    const xml = [
      "<domain type='qemu' id='7'>",
      '  <name>berth-guest</name>',
      '  <devices>',
      "    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><alias name='ide0-1-0'/></disk>",
      "    <disk type='block' device='disk'>",
      "      <source dev='/dev/loop3' index='2'/>",
      "      <target dev='vdb' bus='virtio'/>",
      '      <serial>0b4e7a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b</serial>',
      "      <alias name='virtio-disk1'/>",
      '    </disk>',
      "    <disk type='block' device='disk'><target dev='vdc' bus='virtio'/><serial>a&amp;b</serial><alias name='ua-x'/></disk>",
      '  </devices>',
      '</domain>',
    ].join('\n');
    expect(parseDomainDisks(xml)).toEqual({
      running: true,
      disks: [
        { serial: '', alias: 'ide0-1-0', target: 'hdc' },
        { serial: '0b4e7a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b', alias: 'virtio-disk1', target: 'vdb' },
        { serial: 'a&b', alias: 'ua-x', target: 'vdc' },
      ],
    });
    expect(parseDomainDisks("<domain type='qemu'>\n<devices/>\n</domain>")).toEqual({ running: false, disks: [] });
    // What domblklist --details would list, read from the same XML (the RPC path reads no virsh output).
    expect(parseDomainBlocks(xml)).toEqual([
      { type: 'file', device: 'cdrom', target: 'hdc', source: undefined },
      { type: 'block', device: 'disk', target: 'vdb', source: '/dev/loop3' },
      { type: 'block', device: 'disk', target: 'vdc', source: undefined },
    ]);
    expect(parseDomainBlocks("<domain><devices><disk type='file' device='disk'><source file='/var/a&amp;b.img'/><target dev='vda' bus='virtio'/></disk></devices></domain>")).toEqual([
      { type: 'file', device: 'disk', target: 'vda', source: '/var/a&b.img' },
    ]);
  });
});

describe('virshFailed: no connection to libvirtd touched nothing', () => {
  const result = (stderr: string) => ({ command: 'virsh', exitCode: 1, stdout: '', stderr, durationMs: 5, timedOut: false, aborted: false });
  it('libvirtd not running is UNAVAILABLE; a URI libvirt refuses is CONFIG; both untouched', () => {
    const down = virshFailed(result("error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory"), 'plug a disk');
    expect(down.code).toBe('UNAVAILABLE');
    expect(down.details.untouched).toBe(true);
    const refused = virshFailed(result("error: failed to connect to the hypervisor\nerror: unexpected qemu URI path '/sys', try qemu:///system"), 'plug a disk');
    expect(refused.code).toBe('CONFIG');
    expect(refused.details.untouched).toBe(true);
    expect(refused.hint).toContain('server delete');
    // A failure after the connection (libvirt refused the device) says nothing about untouched.
    expect(virshFailed(result("error: Failed to attach device\nerror: internal error: unable to execute QEMU command 'device_add'"), 'plug a disk').details.untouched).toBeUndefined();
  });
});
