import { BerthError, type Server } from '@berth/core';
import { describe, expect, it } from 'vitest';
import { libvirtHypervisorOf } from './libvirt-consumer.js';

const serverWith = (uri: string): Server => ({ name: 'web-1', hypervisor: { type: 'libvirt', domain: 'web-1', uri } }) as unknown as Server;

describe('libvirtHypervisorOf', () => {
  it('hands on a local URI', () => {
    expect(libvirtHypervisorOf(serverWith('qemu:///system'))).toEqual({ type: 'libvirt', domain: 'web-1', uri: 'qemu:///system' });
    expect(libvirtHypervisorOf(serverWith('qemu+unix:///session')).uri).toBe('qemu+unix:///session');
  });

  it('hands on a stored record an older berth accepted that runs and reads nothing it names (its volumes must stay detachable)', () => {
    for (const uri of ['qemu+ssh://root@h1/system', 'qemu+tcp://10.0.0.1:16509/system', 'qemu+tls://h1.example/system']) {
      expect(libvirtHypervisorOf(serverWith(uri)).uri).toBe(uri);
    }
  });

  it('refuses a stored record whose URI would run or read what it names (virsh would run what ?command= names, as root): CONFIG, untouched, the query not echoed', () => {
    for (const uri of ['qemu+ext:///system?command=/tmp/x.sh', 'qemu+ssh://h1/system?netcat=/tmp/x', 'qemu:///system?socket=/tmp/s', 'qemu+ssh://-oProxyCommand/system', 'qemu+ssh://u@-oX/system', 'qemu+ssh://%2DoProxyCommand/system']) {
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
      expect(BerthError.is(caught) && caught.hint).toContain('nothing was done');
    }
  });
});
