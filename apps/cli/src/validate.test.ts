import { describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { hostName, hypervisorFromFlags, pruneAge, resourceId, resourceName, resourceRef, volumeSize } from './validate.js';

function codeOf(run: () => unknown): string | undefined {
  try {
    run();
  } catch (error) {
    return BerthError.is(error) ? error.code : 'not a BerthError';
  }
  return undefined;
}

describe('volumeSize', () => {
  it('reads binary units', () => {
    expect(volumeSize('1GiB')).toBe(1024 ** 3);
    expect(volumeSize('512MiB')).toBe(512 * 1024 ** 2);
    expect(volumeSize('4096')).toBe(4096);
  });

  it.each(['-1GiB', '0', '5000TiB', 'lots', '1000', '1MB', ''])('refuses %j as VALIDATION', (text) => {
    expect(codeOf(() => volumeSize(text))).toBe('VALIDATION');
  });
});

describe('pruneAge', () => {
  it('reads s, m, h, d and w, and refuses less than an hour or anything else with VALIDATION', () => {
    expect(pruneAge('1h')).toBe(3_600_000);
    expect(pruneAge('30d')).toBe(30 * 86_400_000);
    expect(pruneAge('2w')).toBe(14 * 86_400_000);
    expect(pruneAge('90m')).toBe(90 * 60_000);
    expect(pruneAge('3600s')).toBe(3_600_000);
    for (const bad of ['59m', '0d', 'yesterday', '1.5d', '-1d', '1 d', '30', '']) {
      expect(codeOf(() => pruneAge(bad))).toBe('VALIDATION');
    }
  });
});

describe('names and references', () => {
  it('accepts plain names and refuses paths', () => {
    expect(resourceName('data1', 'volume')).toBe('data1');
    expect(codeOf(() => resourceName('../evil', 'volume'))).toBe('VALIDATION');
    expect(codeOf(() => resourceName('a/b', 'server'))).toBe('VALIDATION');
    expect(codeOf(() => resourceName('', 'volume'))).toBe('VALIDATION');
  });

  it('takes a name or a UUID as a reference', () => {
    expect(resourceRef('data1', 'volume')).toBe('data1');
    expect(resourceRef('0b9f7c1e-4f7e-4d43-9a55-3f1c2d7a8e10', 'volume')).toBe('0b9f7c1e-4f7e-4d43-9a55-3f1c2d7a8e10');
    expect(codeOf(() => resourceRef('../data1', 'volume'))).toBe('VALIDATION');
  });

  it('wants a UUID for attachments and operations', () => {
    expect(codeOf(() => resourceId('123', 'attachment'))).toBe('VALIDATION');
  });

  it('checks host names', () => {
    expect(hostName(' node-2 ')).toBe('node-2');
    expect(codeOf(() => hostName('../x'))).toBe('VALIDATION');
  });
});

describe('hypervisorFromFlags', () => {
  it('reads qemu and libvirt settings, and no --hypervisor (or host) as the host itself', () => {
    expect(hypervisorFromFlags({})).toBeUndefined();
    expect(hypervisorFromFlags({ hypervisor: 'host' })).toBeUndefined();
    expect(hypervisorFromFlags({ hypervisor: 'qemu', qmp: '/run/vm-2/qmp.sock' })).toEqual({ type: 'qemu', qmp: '/run/vm-2/qmp.sock', bus: 'pci.0' });
    expect(hypervisorFromFlags({ hypervisor: 'libvirt', domain: 'web-1', uri: 'qemu:///session' })).toEqual({ type: 'libvirt', domain: 'web-1', uri: 'qemu:///session' });
  });

  it('refuses another hypervisor\'s flag, a missing socket or domain and bad values, saying which flag', () => {
    const message = (flags: Parameters<typeof hypervisorFromFlags>[0]): string => {
      try {
        hypervisorFromFlags(flags);
      } catch (error) {
        return BerthError.is(error) ? `${error.code}: ${error.message}` : 'not a BerthError';
      }
      return 'accepted';
    };
    expect(message({ qmp: '/q.sock' })).toBe('VALIDATION: --qmp belongs to --hypervisor qemu, not host');
    expect(message({ hypervisor: 'libvirt', domain: 'd', qmp: '/q.sock' })).toBe('VALIDATION: --qmp belongs to --hypervisor qemu, not libvirt');
    expect(message({ hypervisor: 'qemu', qmp: '/q.sock', domain: 'd' })).toBe('VALIDATION: --domain belongs to --hypervisor libvirt, not qemu');
    expect(message({ hypervisor: 'qemu' })).toBe('VALIDATION: --hypervisor qemu needs --qmp');
    expect(message({ hypervisor: 'libvirt', uri: 'qemu:///system' })).toBe('VALIDATION: --hypervisor libvirt needs --domain');
    expect(message({ hypervisor: 'qemu', qmp: 'vm.sock' })).toContain('--qmp "vm.sock": the QMP socket is an absolute path');
    expect(message({ hypervisor: 'qemu', qmp: '/q.sock', bus: 'pci 0' })).toContain('--bus');
    expect(message({ hypervisor: 'libvirt', domain: '-x' })).toContain('--domain');
    expect(message({ hypervisor: 'libvirt', domain: 'd', uri: '--readonly' })).toContain('--uri');
  });
});
