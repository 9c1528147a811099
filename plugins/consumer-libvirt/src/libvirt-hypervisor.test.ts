import { BerthError, type Server } from '@berth/core';
import { describe, expect, it } from 'vitest';
import { libvirtHypervisorOf } from './libvirt-consumer.js';

const serverWith = (uri: string): Server => ({ name: 'web-1', hypervisor: { type: 'libvirt', domain: 'web-1', uri } }) as unknown as Server;

describe('libvirtHypervisorOf', () => {
  it('hands on a local URI', () => {
    expect(libvirtHypervisorOf(serverWith('qemu:///system'))).toEqual({ type: 'libvirt', domain: 'web-1', uri: 'qemu:///system' });
    expect(libvirtHypervisorOf(serverWith('qemu+unix:///session')).uri).toBe('qemu+unix:///session');
  });

  it('refuses a stored record whose URI is not local (virsh would run what ?command= names, as root): CONFIG, untouched, the query not echoed', () => {
    for (const uri of ['qemu+ext:///system?command=/tmp/x.sh', 'qemu+ssh://root@h1/system', 'qemu:///system?socket=/tmp/s']) {
      let caught: unknown;
      try {
        libvirtHypervisorOf(serverWith(uri));
      } catch (error) {
        caught = error;
      }
      expect(BerthError.is(caught) && caught.code, uri).toBe('CONFIG');
      expect(BerthError.is(caught) && caught.details).toMatchObject({ server: 'web-1', untouched: true });
      expect(BerthError.is(caught) && caught.message).not.toContain('/tmp/');
      expect(BerthError.is(caught) && caught.hint).toContain('--uri qemu:///system');
    }
  });
});
