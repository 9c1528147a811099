import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createDeviceWaiter, createHostFs, type CommandRunner } from '@berth/host';
import type { GuestAgent } from './guest-agent.js';
import { buildGuestImage, type GuestImage } from './guest-image.js';
import { AGENT_PORT_NAME } from './guest-scripts.js';
import { connectAgent, QEMU_BINARY } from './qemu-guest.js';

/** The libvirt URI the tests use: the system daemon, which they start when it is not running. */
export const LIBVIRT_URI = 'qemu:///system';

/** What `ensureLibvirtDaemons` did. */
export interface LibvirtDaemons {
  /** True when this call started libvirtd (it then keeps running, like a daemon an init system started). */
  started: boolean;
}

/**
 * Make sure virtlogd and libvirtd answer on `uri`. The test machines have no init system, so when
 * `virsh uri` fails the daemons are started by hand (`virtlogd -d`, `libvirtd -d`; an instance
 * already running refuses to start twice, harmlessly) and waited for with a deadline.
 */
export async function ensureLibvirtDaemons(runner: CommandRunner, uri = LIBVIRT_URI, timeoutMs = 60_000): Promise<LibvirtDaemons> {
  const answers = async (): Promise<boolean> => (await runner.run('virsh', ['-c', uri, 'uri'], { reject: false, timeoutMs: 15_000 })).exitCode === 0;
  if (await answers()) return { started: false };
  await runner.run('virtlogd', ['-d'], { reject: false, timeoutMs: 15_000 });
  const daemon = await runner.run('libvirtd', ['-d'], { reject: false, timeoutMs: 30_000 });
  if (daemon.notFound) throw new Error('libvirtd is not installed: apt-get install -y libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients');
  const waiter = createDeviceWaiter(createHostFs('/'));
  await waiter.waitUntil('/run/libvirt', async () => ((await answers()) ? true : undefined), {
    timeoutMs,
    pollMs: 200,
    what: `libvirtd answering on ${uri}`,
  });
  return { started: true };
}

/** Options of `bootLibvirtGuest`. */
export interface LibvirtGuestOptions {
  runner: CommandRunner;
  uri?: string;
  image?: GuestImage;
  bootTimeoutMs?: number;
  memoryMiB?: number;
}

/** A running transient libvirt domain started by the tests. */
export interface LibvirtGuest {
  /** The domain's name (`berth-vmkit-<hex>`). */
  readonly domain: string;
  readonly uri: string;
  readonly agent: GuestAgent;
  readonly dir: string;
  /** `virsh suspend`: the guest stops running and so cannot answer an unplug request. */
  suspend(): Promise<void>;
  /** `virsh resume`. */
  resume(): Promise<void>;
  /** The guest's serial console so far. */
  consoleLog(): Promise<string>;
  /** `virsh destroy` (a transient domain then disappears) and remove the directory. Idempotent. */
  stop(): Promise<void>;
}

function xmlEscape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

/**
 * The domain XML of a test guest. `<features><acpi/>` is required: without it libvirt passes
 * `-no-acpi` and every PCI hot-plug fails with "Bus 'pci.0' does not support hotplugging". The
 * agent channel has no path: libvirt makes one under its own directory (read back from dumpxml).
 */
export function libvirtGuestXml(name: string, image: GuestImage, consoleLog: string, memoryMiB = 256): string {
  return `<domain type='qemu'>
  <name>${xmlEscape(name)}</name>
  <memory unit='MiB'>${memoryMiB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${xmlEscape(image.kernel)}</kernel>
    <initrd>${xmlEscape(image.initrd)}</initrd>
    <cmdline>${xmlEscape(image.cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/${QEMU_BINARY}</emulator>
    <serial type='file'><source path='${xmlEscape(consoleLog)}'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='${AGENT_PORT_NAME}'/></channel>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

/** The host path of the agent channel's socket in a domain's live XML. */
export function agentSocketFromXml(xml: string): string | undefined {
  for (const match of xml.matchAll(/<channel type='unix'>([\s\S]*?)<\/channel>/g)) {
    const body = match[1] ?? '';
    if (!body.includes(`name='${AGENT_PORT_NAME}'`)) continue;
    const source = /<source mode='bind' path='([^']+)'/.exec(body);
    if (source?.[1]) return source[1];
  }
  return undefined;
}

/**
 * Boot the test guest as a transient libvirt domain (`virsh create`): the kernel and initramfs
 * sit in a 0755 directory because libvirt's QEMU runs as `libvirt-qemu`. Resolves once the guest
 * agent answered.
 */
export async function bootLibvirtGuest(options: LibvirtGuestOptions): Promise<LibvirtGuest> {
  const { runner } = options;
  const uri = options.uri ?? LIBVIRT_URI;
  await ensureLibvirtDaemons(runner, uri);
  const dir = await mkdtemp(path.join(tmpdir(), 'berth-vmkit-'));
  await chmod(dir, 0o755);
  const domain = `berth-vmkit-${randomBytes(4).toString('hex')}`;
  const consoleLog = path.join(dir, 'console.log');
  const virsh = (args: string[]) => runner.run('virsh', ['-c', uri, ...args], { timeoutMs: 60_000 });
  let created = false;
  let agent: GuestAgent | undefined;
  const stop = async (): Promise<void> => {
    agent?.close();
    if (created) {
      const result = await runner.run('virsh', ['-c', uri, 'destroy', domain], { reject: false, timeoutMs: 60_000 });
      if (result.exitCode !== 0 && !/not found|no domain/i.test(result.stderr)) {
        throw new Error(`virsh destroy ${domain} failed: ${result.stderr.trim()}`);
      }
      created = false;
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const image = options.image ?? (await buildGuestImage(runner, dir));
    // virsh cannot read /dev/stdin from the runner (a socket, not a pipe): the XML goes in a file.
    const domainXml = path.join(dir, 'domain.xml');
    await writeFile(domainXml, libvirtGuestXml(domain, image, consoleLog, options.memoryMiB), { mode: 0o644 });
    await virsh(['create', domainXml]);
    created = true;
    const xml = (await virsh(['dumpxml', domain])).stdout;
    const socket = agentSocketFromXml(xml);
    if (!socket) throw new Error(`domain ${domain} has no agent channel socket in its live XML`);
    const bootTimeoutMs = options.bootTimeoutMs ?? 240_000;
    agent = await connectAgent(socket, bootTimeoutMs, async () => '');
    await agent.run('true', bootTimeoutMs).catch(async (error: unknown) => {
      const log = await readFile(consoleLog, 'utf8').catch(() => '');
      throw new Error(`guest ${domain} did not come up: ${(error as Error).message}; console tail: ${log.slice(-2000)}`, { cause: error });
    });
    const guestAgent = agent;
    return {
      domain,
      uri,
      agent: guestAgent,
      dir,
      suspend: async () => {
        await virsh(['suspend', domain]);
      },
      resume: async () => {
        await virsh(['resume', domain]);
      },
      consoleLog: () => readFile(consoleLog, 'utf8').catch(() => ''),
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
