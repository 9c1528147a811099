import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createDeviceWaiter, createHostFs, startDaemon, stopDaemon, type CommandRunner } from '@berth/host';
import { QmpClient } from '@berth/qemu';
import { GuestAgent } from './guest-agent.js';
import { buildGuestImage, type GuestImage } from './guest-image.js';
import { AGENT_PORT_NAME } from './guest-scripts.js';

/** Options of `bootQemuGuest`. */
export interface QemuGuestOptions {
  runner: CommandRunner;
  /** A guest image to reuse (built in the guest's own directory when absent). */
  image?: GuestImage;
  /** How long the boot may take, in ms (default 240 000: TCG on a loaded 2-core machine). */
  bootTimeoutMs?: number;
  /** Memory in MiB (default 256). */
  memoryMiB?: number;
}

/** A running QEMU guest started by the tests. */
export interface QemuGuest {
  /** A name for messages (`berth-vmkit-<hex>`). */
  readonly name: string;
  /** The QMP socket left to the code under test (the `qemu` consumer's `--qmp`). */
  readonly qmpSocket: string;
  /** A second QMP socket for the test itself (pause, resume): QEMU serves one client per monitor. */
  readonly controlQmpSocket: string;
  /** The channel to the guest's agent. */
  readonly agent: GuestAgent;
  readonly pid: number;
  readonly dir: string;
  /** Run one QMP command on the control socket (the test's own monitor) and return its `return`. */
  control(command: string, args?: Record<string, unknown>): Promise<unknown>;
  /** QMP `stop`: the guest stops running and so cannot answer an unplug request. */
  pause(): Promise<void>;
  /** QMP `cont`. */
  resume(): Promise<void>;
  /** The guest's serial console so far (boot log, for failure messages). */
  consoleLog(): Promise<string>;
  /** Stop QEMU (SIGTERM, then SIGKILL) and remove the guest's directory. Idempotent. */
  stop(): Promise<void>;
}

/** Where the QEMU binary is; the tests' machine has it from qemu-system-x86. */
export const QEMU_BINARY = 'qemu-system-x86_64';

/** The QEMU command line of a test guest (TCG, `pc` machine, no default devices). */
export function qemuGuestArgs(image: GuestImage, sockets: { qmp: string; control: string; agent: string; console: string }, memoryMiB = 256, name = 'berth-vmkit'): string[] {
  return [
    '-name', name,
    // The `pc` machine's pci.0 takes hot-plugged virtio-blk-pci devices through ACPI.
    '-machine', 'pc', '-accel', 'tcg', '-m', String(memoryMiB),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-kernel', image.kernel, '-initrd', image.initrd, '-append', image.cmdline,
    '-serial', `file:${sockets.console}`,
    '-qmp', `unix:${sockets.qmp},server=on,wait=off`,
    '-qmp', `unix:${sockets.control},server=on,wait=off`,
    '-device', 'virtio-serial-pci,id=vmkit-serial0',
    '-chardev', `socket,id=vmkit-agent,path=${sockets.agent},server=on,wait=off`,
    '-device', `virtserialport,chardev=vmkit-agent,name=${AGENT_PORT_NAME}`,
  ];
}

/**
 * Boot a guest under plain QEMU with TCG: kernel from linux-image-amd64, busybox initramfs, two
 * QMP sockets and the agent channel. Resolves once the agent answered (the guest is up). QEMU is
 * started detached with a pid file (`@berth/host`'s daemon helpers), so `stop()` — or a later
 * run reading the pid file — can end exactly this process.
 */
export async function bootQemuGuest(options: QemuGuestOptions): Promise<QemuGuest> {
  const dir = await mkdtemp(path.join(tmpdir(), 'berth-vmkit-'));
  const name = `berth-vmkit-${randomBytes(4).toString('hex')}`;
  const sockets = {
    qmp: path.join(dir, 'qmp.sock'),
    control: path.join(dir, 'control.sock'),
    agent: path.join(dir, 'agent.sock'),
    console: path.join(dir, 'console.log'),
  };
  const pidFile = path.join(dir, 'qemu.pid');
  let started = false;
  let agent: GuestAgent | undefined;
  const stop = async (): Promise<void> => {
    agent?.close();
    if (started) await stopDaemon(pidFile, { timeoutMs: 10_000 });
    started = false;
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const image = options.image ?? (await buildGuestImage(options.runner, dir));
    const { pid } = await startDaemon({
      file: QEMU_BINARY,
      args: qemuGuestArgs(image, sockets, options.memoryMiB, name),
      logFile: path.join(dir, 'qemu.log'),
      pidFile,
    });
    started = true;
    const bootTimeoutMs = options.bootTimeoutMs ?? 240_000;
    agent = await connectAgent(sockets.agent, bootTimeoutMs, () => readFile(path.join(dir, 'qemu.log'), 'utf8').catch(() => ''));
    await agent.run('true', bootTimeoutMs).catch(async (error: unknown) => {
      const log = await readFile(sockets.console, 'utf8').catch(() => '');
      throw new Error(`guest ${name} did not come up: ${(error as Error).message}; console tail: ${log.slice(-2000)}`, { cause: error });
    });
    const guestAgent = agent;
    const control = async (command: string, args?: Record<string, unknown>): Promise<unknown> => {
      const qmp = await QmpClient.connect(sockets.control, { timeoutMs: 30_000 });
      try {
        return await qmp.execute(command, args, { timeoutMs: 30_000 });
      } finally {
        qmp.close();
      }
    };
    return {
      name,
      control,
      pause: async () => {
        await control('stop');
      },
      resume: async () => {
        await control('cont');
      },
      qmpSocket: sockets.qmp,
      controlQmpSocket: sockets.control,
      agent: guestAgent,
      pid,
      dir,
      consoleLog: () => readFile(sockets.console, 'utf8').catch(() => ''),
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * Connect to the agent socket, which QEMU creates just after it starts: a connect is tried again
 * whenever something changes in the socket's directory (and on the waiter's poll) until the deadline.
 */
export async function connectAgent(socketPath: string, timeoutMs: number, diagnostics: () => Promise<string>): Promise<GuestAgent> {
  const waiter = createDeviceWaiter(createHostFs('/'));
  let lastError: unknown;
  try {
    return await waiter.waitUntil(
      path.dirname(socketPath),
      async () => {
        try {
          return await GuestAgent.connect(socketPath);
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code;
          if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw error;
          lastError = error;
          return undefined;
        }
      },
      { timeoutMs, what: `the guest agent socket ${socketPath}` },
    );
  } catch (error) {
    throw new Error(`cannot reach the guest agent at ${socketPath}: ${(error as Error).message} (${String(lastError)}); ${await diagnostics()}`, { cause: error });
  }
}
