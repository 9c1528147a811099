import { isIP } from 'node:net';
import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { hostFacts } from './host-facts.js';

describe('hostFacts', () => {
  it('reports the machine as os-brick would put it in a connector', () => {
    const facts = hostFacts();
    expect(facts.hostname).toBe(os.hostname());
    expect(facts.osType).toBe('linux');
    expect(facts.platform).toBe(os.machine());
    expect(facts.isRoot).toBe(process.getuid?.() === 0);
    expect(facts.ips.length).toBeGreaterThan(0);
    for (const ip of facts.ips) expect(isIP(ip)).not.toBe(0);
  });

  it('lists IPv4 addresses before IPv6 ones, without loopback', () => {
    const { ips } = hostFacts();
    const firstV6 = ips.findIndex((ip) => isIP(ip) === 6);
    const lastV4 = ips.map((ip) => isIP(ip)).lastIndexOf(4);
    if (firstV6 >= 0 && lastV4 >= 0) expect(lastV4).toBeLessThan(firstV6);
    if (ips.length > 1) expect(ips).not.toContain('127.0.0.1');
    expect(ips).not.toContain('::1');
  });
});
