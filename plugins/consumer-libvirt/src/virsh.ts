import { BerthError } from '@berth/core';
import type { CommandResult, CommandRunner } from '@berth/host';

/** One row of `virsh domblklist --details`. */
export interface DomainBlock {
  type: string;
  device: string;
  target: string;
  /** The source path, or `undefined` for an empty drive (`-`). */
  source: string | undefined;
}

/**
 * Parse `virsh domblklist DOMAIN --details`: a header, a dashed rule, then `Type Device Target
 * Source` per disk (libvirt 9.0; recorded in `domblklist.test.ts`). Sources with spaces keep them.
 */
export function parseDomblklist(text: string): DomainBlock[] {
  const rows: DomainBlock[] = [];
  let body = false;
  for (const line of text.split('\n')) {
    if (!body) {
      if (/^-{3,}/.test(line.trim())) body = true;
      continue;
    }
    const match = /^\s*(\S+)\s+(\S+)\s+(\S+)\s+(.+?)\s*$/.exec(line);
    if (!match) continue;
    const [, type, device, target, source] = match as unknown as [string, string, string, string, string];
    rows.push({ type, device, target, source: source === '-' ? undefined : source });
  }
  return rows;
}

/** Whether virsh failed because the domain does not exist or does not run (its guest holds nothing). */
export function domainGone(result: CommandResult): boolean {
  return /failed to get domain|domain not found|no domain with matching|domain is not running/i.test(result.stderr);
}

/** virsh through `@berth/host`'s runner, always with `-c URI`, an argument array and a timeout. */
export class Virsh {
  constructor(
    private readonly runner: CommandRunner,
    /** The libvirt connection URI (`qemu:///system`). */
    readonly uri: string,
    private readonly timeoutMs: number,
  ) {}

  /** Run `virsh -c URI ...args`; the result is returned whatever the exit code. */
  run(args: readonly string[], timeoutMs = this.timeoutMs, signal?: AbortSignal): Promise<CommandResult> {
    return this.runner.run('virsh', ['-c', this.uri, ...args], { timeoutMs, reject: false, ...(signal ? { signal } : {}) });
  }

  /** Run and throw a BerthError naming `what` when virsh fails. */
  async check(args: readonly string[], what: string, timeoutMs?: number): Promise<CommandResult> {
    const result = await this.run(args, timeoutMs);
    if (result.exitCode !== 0) throw virshFailed(result, what);
    return result;
  }

  /** The domain's disks, or `undefined` when the domain is gone or not running. */
  async blocks(domain: string): Promise<DomainBlock[] | undefined> {
    const result = await this.run(['domblklist', domain, '--details']);
    if (result.exitCode === 0) return parseDomblklist(result.stdout);
    if (domainGone(result)) return undefined;
    throw virshFailed(result, `list the disks of libvirt domain ${domain}`);
  }

  /** `domstate --reason` (`paused (user)`, `running (booted)`), or `unknown`. */
  async state(domain: string): Promise<string> {
    const result = await this.run(['domstate', domain, '--reason']);
    return result.exitCode === 0 ? result.stdout.trim() : 'unknown';
  }
}

/** A failed virsh run as a BerthError: what was tried, virsh's own words, and what to do. */
export function virshFailed(result: CommandResult, what: string): BerthError {
  const said = (result.stderr.trim() || result.stdout.trim()).replace(/^error:\s*/gm, '').replace(/\n+/g, '; ');
  if (result.notFound) {
    return new BerthError('HOST_UNSUPPORTED', `cannot ${what}: virsh is not installed`, { hint: 'apt-get install -y libvirt-clients' });
  }
  if (result.timedOut) {
    return new BerthError('TIMEOUT', `cannot ${what}: virsh did not answer in time`, { hint: 'check that libvirtd runs and answers (virsh uri)' });
  }
  if (/failed to connect to the hypervisor|libvirt-sock/i.test(said)) {
    return new BerthError('HOST_UNSUPPORTED', `cannot ${what}: libvirtd does not answer (${said})`, {
      hint: 'start it: virtlogd -d; libvirtd -d (or systemctl start libvirtd)',
    });
  }
  if (/does not support hotplugging/.test(said)) {
    return new BerthError('DRIVER_ERROR', `cannot ${what}: ${said}`, {
      hint: "give the domain <features><acpi/></features>: without ACPI libvirt passes -no-acpi and pci.0 takes no hot-plugged disks",
    });
  }
  return new BerthError('DRIVER_ERROR', `cannot ${what}: ${said || `virsh exited ${result.exitCode}`}`, {
    hint: 'see libvirtd\'s log and the domain\'s QEMU log (/var/log/libvirt/qemu/)',
    details: { exitCode: result.exitCode },
  });
}
