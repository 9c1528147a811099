import { constants, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { SimKernel } from './sim-kernel.js';
import type { ToolResult } from './tool-protocol.js';

/** Host directories that are the simulated host's own (bound over the machine's in os-brick's namespace). */
const SIMULATED_DIRS = ['/sys/', '/dev/', '/etc/iscsi/', '/etc/multipath/', '/etc/multipath.conf'];

/** What the fake tee works on. */
export interface TeeContext {
  root: string;
  kernel: SimKernel;
}

/**
 * coreutils `tee [-a] [-i] [-p] FILE…` for the simulated host: stdin to stdout and to each FILE.
 * It is here because os-brick writes sysfs attributes with `tee -a PATH`: a write to a
 * simulated `scan`, `delete` or `rescan` returns once the kernel model has acted (a real sysfs
 * write is synchronous), where a FIFO write would return at once. Paths under /sys, /dev,
 * /etc/iscsi and /etc/multipath are the simulated host's (as in os-brick's mount namespace);
 * any other absolute path is the machine's file, written as the real tee would.
 */
export async function runTee(argv: readonly string[], stdin: Buffer, ctx: TeeContext): Promise<ToolResult> {
  let append = false;
  const files: string[] = [];
  let options = true;
  for (const arg of argv) {
    if (options && arg === '--') options = false;
    else if (options && (arg === '-a' || arg === '--append')) append = true;
    else if (options && (arg === '-i' || arg === '-p' || arg === '--ignore-interrupts' || arg.startsWith('--output-error'))) continue;
    else if (options && arg === '--version') return { stdout: 'tee (GNU coreutils) 9.1 (simulated)\n', stderr: '', exitCode: 0 };
    else if (options && arg.startsWith('-') && arg !== '-') {
      const shown = arg.startsWith('--') ? `unrecognized option '${arg}'` : `invalid option -- '${arg.slice(1, 2)}'`;
      return { stdout: '', stderr: `tee: ${shown}\nTry 'tee --help' for more information.\n`, exitCode: 1 };
    } else files.push(arg);
  }
  let stderr = '';
  for (const file of files) {
    const error = await teeTo(file, stdin, append, ctx);
    if (error) stderr += `tee: ${file}: ${error}\n`;
  }
  return { stdout: stdin.toString('utf8'), stderr, exitCode: stderr === '' ? 0 : 1 };
}

/** Write to one file; the error text (strerror) when it fails. */
async function teeTo(file: string, data: Buffer, append: boolean, ctx: TeeContext): Promise<string | undefined> {
  if (!path.isAbsolute(file)) return 'relative paths are not supported by the simulated tee';
  const resolvedRoot = path.resolve(ctx.root);
  const inRoot = file.startsWith(`${resolvedRoot}/`);
  const hostPath = inRoot ? `/${path.relative(resolvedRoot, file)}` : file;
  const simulated = SIMULATED_DIRS.some((d) => hostPath.startsWith(d) || `${hostPath}/` === d);
  const target = simulated ? path.join(resolvedRoot, hostPath) : file;
  let real: string | undefined;
  try {
    real = await fsp.realpath(target);
  } catch {
    // sysfs and devtmpfs never make a file on write; elsewhere tee creates it.
    if (simulated) return 'No such file or directory';
  }
  if (real !== undefined) {
    try {
      if (await ctx.kernel.writeAttribute(real, data.toString('utf8'))) return undefined;
    } catch (error) {
      return (error as NodeJS.ErrnoException).code === 'EINVAL' ? 'Invalid argument' : (error as Error).message;
    }
  }
  try {
    const stat = real === undefined ? undefined : await fsp.stat(real);
    if (stat?.isFIFO()) {
      // Some other FIFO: never block the daemon on it.
      const handle = await fsp.open(real!, constants.O_WRONLY | constants.O_NONBLOCK);
      try {
        await handle.write(data);
      } finally {
        await handle.close();
      }
    } else if (append) await fsp.appendFile(real ?? target, data);
    else await fsp.writeFile(real ?? target, data);
    return undefined;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? 'No such file or directory' : code === 'EACCES' ? 'Permission denied' : (error as Error).message;
  }
}
