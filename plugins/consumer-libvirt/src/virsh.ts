import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BerthError } from '@berth/core';
import type { CommandResult, CommandRunner } from '@berth/host';
import { parseDomainBlocks, type DomainBlock } from './disk-xml.js';
import { AFFECT_LIVE, LibvirtRpcConnection, LibvirtRpcError, LibvirtRpcTimeout, systemSocketOf } from './libvirt-rpc.js';

/** A disk row of the domain (defined beside the XML that reads it). */
export type { DomainBlock };

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

// One RPC connection per libvirtd socket and URI in this process, shared by every consumer.
const connections = new Map<string, LibvirtRpcConnection>();

/** The process's RPC connection to the libvirtd of a local `DRIVER:///system` URI, or `undefined`. */
function rpcFor(uri: string): LibvirtRpcConnection | undefined {
  const socket = systemSocketOf(uri);
  if (socket === undefined) return undefined;
  const key = `${socket} ${uri}`;
  let connection = connections.get(key);
  if (!connection) connections.set(key, (connection = new LibvirtRpcConnection(socket, uri)));
  return connection;
}

/** Close this process's libvirt RPC connections (the next call opens a new one): what a libvirtd restart does to them. */
export function closeLibvirtConnections(): void {
  for (const connection of connections.values()) connection.close();
}

/** A device-removed watch: `done` settles at the next removal or when the wait is over. */
export interface RemovalWatch {
  done: Promise<unknown>;
  stop(): void;
}

/**
 * libvirt for the consumer: for a local `DRIVER:///system` URI, libvirtd's own RPC over its unix
 * socket (one connection kept open, no process per call; `LibvirtRpcConnection`); otherwise, and
 * whenever that socket cannot be reached or breaks mid-call, `virsh -c URI` through
 * `@berth/host`'s runner (argument arrays, timeouts). Both answer as a `CommandResult` (libvirt's
 * error as `error: MESSAGE` on stderr, as virsh prints it), so callers and their errors are the
 * same whichever path ran.
 */
export class Virsh {
  private readonly rpc: LibvirtRpcConnection | undefined;

  constructor(
    private readonly runner: CommandRunner,
    /** The libvirt connection URI (`qemu:///system`). */
    readonly uri: string,
    private readonly timeoutMs: number,
    /** Where `attach-device` writes its XML for a virsh process (virsh reads it from a file). */
    private readonly xmlDir: string,
    useRpc = true,
  ) {
    this.rpc = useRpc ? rpcFor(uri) : undefined;
  }

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

  /**
   * The call over RPC as a CommandResult; when the socket cannot be reached or breaks mid-call
   * (libvirtd down or restarting), `fallback` (a virsh process) decides. Every call here may be
   * repeated: an attach that went through answers "duplicated" / "non unique alias" the second
   * time, which the caller already handles.
   */
  private async viaRpc(command: string, call: (rpc: LibvirtRpcConnection) => Promise<string>, fallback: () => Promise<CommandResult>): Promise<CommandResult> {
    const rpc = this.rpc;
    if (!rpc) return fallback();
    const start = performance.now();
    const result = (exitCode: number, stdout: string, stderr: string, timedOut = false): CommandResult => ({
      command: `libvirt rpc (${this.uri}) ${command}`,
      exitCode,
      stdout,
      stderr,
      durationMs: performance.now() - start,
      timedOut,
      aborted: false,
    });
    try {
      return result(0, await call(rpc), '');
    } catch (error) {
      if (error instanceof LibvirtRpcTimeout) return result(-1, '', '', true);
      if (error instanceof LibvirtRpcError && !error.connection) return result(1, '', `error: ${error.message}\n`);
      return fallback();
    }
  }

  /** `attach-device DOMAIN FILE --live` of `xml`. */
  attachDevice(domain: string, xml: string): Promise<CommandResult> {
    return this.viaRpc(
      `attach-device ${domain} --live`,
      async (rpc) => {
        await rpc.attachDevice(domain, xml, AFFECT_LIVE, this.timeoutMs);
        return 'Device attached successfully\n';
      },
      async () => {
        // virsh reads the XML from a file (the runner's stdin is a socket, which virsh cannot open).
        await mkdir(this.xmlDir, { recursive: true, mode: 0o700 });
        const file = path.join(this.xmlDir, `attach-${randomBytes(6).toString('hex')}.xml`);
        await writeFile(file, xml, { mode: 0o600 });
        try {
          return await this.run(['attach-device', domain, file, '--live']);
        } finally {
          await rm(file, { force: true });
        }
      },
    );
  }

  /** `detach-device-alias DOMAIN ALIAS --live` (asynchronous: the guest is asked). */
  detachAlias(domain: string, alias: string): Promise<CommandResult> {
    return this.viaRpc(
      `detach-device-alias ${domain} ${alias} --live`,
      async (rpc) => {
        await rpc.detachDeviceAlias(domain, alias, AFFECT_LIVE, this.timeoutMs);
        return 'Device detach request sent successfully\n';
      },
      () => this.run(['detach-device-alias', domain, alias, '--live']),
    );
  }

  /** `dumpxml DOMAIN`: the live XML. */
  dumpxml(domain: string): Promise<CommandResult> {
    return this.viaRpc(`dumpxml ${domain}`, (rpc) => rpc.xmlDesc(domain, this.timeoutMs), () => this.run(['dumpxml', domain]));
  }

  /** The domain's disks, or `undefined` when the domain is gone or not running. */
  async blocks(domain: string): Promise<DomainBlock[] | undefined> {
    let fromXml = false;
    const result = await this.viaRpc(
      `domblklist ${domain} --details`,
      async (rpc) => {
        const xml = await rpc.xmlDesc(domain, this.timeoutMs);
        fromXml = true;
        return xml;
      },
      () => this.run(['domblklist', domain, '--details']),
    );
    if (result.exitCode === 0) return fromXml ? parseDomainBlocks(result.stdout) : parseDomblklist(result.stdout);
    if (domainGone(result)) return undefined;
    throw virshFailed(result, `list the disks of libvirt domain ${domain}`);
  }

  /**
   * Wait for the domain's next device-removed event, at most `seconds`. Over RPC the callback is
   * registered before this resolves (a removal after it cannot be missed); with virsh it is a
   * `virsh event --event device-removed --timeout S` process.
   */
  async watchRemoved(domain: string, seconds: number): Promise<RemovalWatch> {
    if (this.rpc) {
      const watch = await this.rpc.watchDeviceRemoved(domain, this.timeoutMs).catch(() => undefined);
      if (watch) {
        let timer: NodeJS.Timeout | undefined;
        const done = Promise.race([watch.next(), new Promise((resolve) => (timer = setTimeout(resolve, seconds * 1000)))]).finally(() => {
          clearTimeout(timer);
          void watch.stop();
        });
        return {
          done,
          stop: () => {
            clearTimeout(timer);
            void watch.stop();
          },
        };
      }
    }
    const stop = new AbortController();
    const done = this.run(['event', domain, '--event', 'device-removed', '--timeout', String(seconds)], (seconds + 10) * 1000, stop.signal).catch(() => undefined);
    return { done, stop: () => stop.abort() };
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
  // No connection to libvirtd: nothing was asked of it (`untouched`). Either it does not run (a
  // service berth needs, out of reach: UNAVAILABLE) or it refused the server's URI (CONFIG).
  if (/failed to connect to the hypervisor|libvirt-sock/i.test(said)) {
    if (/no such file|connection refused|libvirt-sock/i.test(said)) {
      return new BerthError('UNAVAILABLE', `cannot ${what}: libvirtd does not answer (${said})`, {
        hint: 'start it: virtlogd -d; libvirtd -d (or systemctl start libvirtd)',
        details: { untouched: true },
      });
    }
    return new BerthError('CONFIG', `cannot ${what}: libvirt refused the connection (${said})`, {
      hint: "check the server's libvirt URI (berth server show); to change it: berth server delete, then berth server create --uri",
      details: { untouched: true },
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
