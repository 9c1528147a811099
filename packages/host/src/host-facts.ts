import os from 'node:os';

/** What berth needs to know about the machine it runs on. */
export interface HostFacts {
  /** The machine name, as os-brick's connector `host`. */
  hostname: string;
  /** Non-internal IPv4 addresses first, then IPv6 (link-local left out); `127.0.0.1` when there is none. */
  ips: string[];
  /** True when running as uid 0 (attaching devices needs it). */
  isRoot: boolean;
  /** The machine architecture, as os-brick's connector `platform` (`x86_64`). */
  platform: string;
  /** The operating system, as os-brick's connector `os_type` (`linux`). */
  osType: string;
}

/** Read the host facts from node:os, so no other package asks the OS itself. */
export function hostFacts(): HostFacts {
  const v4: string[] = [];
  const v6: string[] = [];
  for (const addresses of Object.values(os.networkInterfaces())) {
    for (const a of addresses ?? []) {
      if (a.internal) continue;
      if (a.family === 'IPv4') v4.push(a.address);
      // Link-local IPv6 needs a scope id to be reached, so it is no use to a storage target.
      else if (!/^fe[89ab]/i.test(a.address)) v6.push(a.address);
    }
  }
  const ips = [...new Set([...v4, ...v6])];
  return {
    hostname: os.hostname(),
    ips: ips.length > 0 ? ips : ['127.0.0.1'],
    isRoot: process.getuid?.() === 0,
    platform: os.machine(),
    osType: process.platform,
  };
}
