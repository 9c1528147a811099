import { promises as fsp } from 'node:fs';
import { createHostFs, type CommandRunner } from '@berth/host';
import type { DmMultipath } from './dm-multipath.js';
import type { SimKernel } from './sim-kernel.js';
import type { ToolResult } from './tool-protocol.js';

const COMMANDS = new Set(['--getsize64', '--getsz', '--getss', '--getpbsz', '--getbsz', '--getro', '--flushbufs', '--rereadpt']);

/**
 * util-linux `blockdev` for the simulated host's devices: the commands drivers run
 * (`--flushbufs`, `--getsize64`, `--rereadpt`, and the size getters) on host paths under the
 * root. A simulated disk reports the size the kernel knows (it changes on rescan); a flush syncs
 * the backing file or runs the real blockdev on the backing block device. A multipath map
 * (`/dev/dm-N`) reports its table's size and flushes the path its node gives access to.
 */
export async function runBlockdev(argv: readonly string[], kernel: SimKernel, runner: CommandRunner, dm?: DmMultipath): Promise<ToolResult> {
  const commands = argv.filter((a) => a.startsWith('-') && a !== '-v' && a !== '-q');
  const devices = argv.filter((a) => !a.startsWith('-'));
  let stdout = '';
  let stderr = '';
  for (const c of commands) {
    if (!COMMANDS.has(c)) {
      return { stdout: '', stderr: `blockdev: Unknown command: ${c}\n\nUsage:\n blockdev -h|-V\n blockdev --report [devices]\n blockdev [-v|-q] commands devices\n`, exitCode: 1 };
    }
  }
  if (commands.length === 0 || devices.length === 0) {
    return { stdout: '', stderr: 'blockdev: no device specified\n', exitCode: 1 };
  }
  const fs = createHostFs(kernel.root);
  for (const device of devices) {
    let hostPath: string;
    try {
      hostPath = await fs.realpath(device);
    } catch {
      stderr += `blockdev: cannot open ${device}: No such file or directory\n`;
      return { stdout, stderr, exitCode: 1 };
    }
    const name = /^\/dev\/(sd[a-z]+)$/.exec(hostPath)?.[1];
    const sim = name === undefined ? undefined : kernel.blockDevice(name);
    const dmName = /^\/dev\/(dm-\d+)$/.exec(hostPath)?.[1];
    const map = dmName === undefined ? undefined : dm?.blockDevice(dmName);
    let size: number;
    let flush: () => Promise<void>;
    if (map) {
      size = map.sizeBytes;
      const backing = map.backingPath;
      flush =
        backing === undefined
          ? async () => undefined
          : map.isBlockDevice
            ? async () => {
                await runner.run('blockdev', ['--flushbufs', backing], { timeoutMs: 30_000 });
              }
            : () => fsyncFile(backing);
    } else if (sim) {
      size = sim.sizeBytes;
      flush = sim.disk.isBlockDevice
        ? async () => {
            await runner.run('blockdev', ['--flushbufs', sim.disk.backingPath], { timeoutMs: 30_000 });
          }
        : () => fsyncFile(sim.disk.backingPath);
    } else {
      const st = await fsp.stat(fs.resolve(hostPath)).catch(() => undefined);
      if (!st) {
        stderr += `blockdev: cannot open ${device}: No such file or directory\n`;
        return { stdout, stderr, exitCode: 1 };
      }
      size = st.size;
      flush = () => fsyncFile(fs.resolve(hostPath));
    }
    for (const c of commands) {
      switch (c) {
        case '--getsize64':
          stdout += `${size}\n`;
          break;
        case '--getsz':
          stdout += `${Math.floor(size / 512)}\n`;
          break;
        case '--getss':
        case '--getpbsz':
          stdout += '512\n';
          break;
        case '--getbsz':
          stdout += '4096\n';
          break;
        case '--getro':
          stdout += '0\n';
          break;
        case '--flushbufs':
          await flush();
          break;
        default:
          // --rereadpt: the simulated disks have no partition table to re-read.
          break;
      }
    }
  }
  return { stdout, stderr, exitCode: 0 };
}

async function fsyncFile(file: string): Promise<void> {
  const handle = await fsp.open(file, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
