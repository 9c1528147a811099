import { chmod, open, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { CommandRunner } from '@berth/host';
import { buildCpio, type CpioEntry } from './cpio.js';
import { AGENT_SCRIPT, initScript } from './guest-scripts.js';

/** The modules the guest loads: virtio over PCI, the disk driver and the agent's serial port. */
export const GUEST_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_console'] as const;

/** Where the Debian packages put what the guest is made of. */
export interface GuestImageSources {
  /** `/boot` (linux-image-amd64). */
  bootDir?: string;
  /** `/lib/modules` (same package). */
  modulesDir?: string;
  /** A static busybox (busybox-static). */
  busybox?: string;
}

/** A bootable guest: kernel, initramfs and the kernel command line. */
export interface GuestImage {
  /** The kernel QEMU loads: an uncompressed ELF `vmlinux` when it could be extracted, else the bzImage. */
  kernel: string;
  initrd: string;
  cmdline: string;
  /** The kernel version both came from (`6.1.0-57-amd64`). */
  kernelVersion: string;
}

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const GZIP_MAGIC = Buffer.from([0x1f, 0x8b, 0x08]);
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

/** What to install when the guest's pieces are missing. */
export const GUEST_PACKAGES_HINT = 'apt-get install -y qemu-system-x86 linux-image-amd64 busybox-static (scripts/install-system-deps.sh)';

/**
 * Build the guest in `dir` (made readable by libvirt's `libvirt-qemu` user: 0755 directory, 0644
 * files). The kernel is the newest `/boot/vmlinuz-*` that has its modules installed; it is
 * decompressed to a plain ELF because QEMU boots that directly through PVH, skipping the kernel's
 * own decompression, which under TCG costs more than the rest of the boot (14 s → 6 s measured).
 */
export async function buildGuestImage(runner: CommandRunner, dir: string, sources: GuestImageSources = {}): Promise<GuestImage> {
  const bootDir = sources.bootDir ?? '/boot';
  const modulesDir = sources.modulesDir ?? '/lib/modules';
  const busybox = sources.busybox ?? '/bin/busybox';
  const kernelVersion = await newestKernel(bootDir, modulesDir);
  const modules = await moduleLoadOrder(path.join(modulesDir, kernelVersion), GUEST_MODULES);

  const entries: CpioEntry[] = [
    { kind: 'dir', path: 'bin' },
    { kind: 'dir', path: 'lib' },
    { kind: 'dir', path: 'lib/modules' },
    { kind: 'dir', path: 'dev' },
    { kind: 'dir', path: 'proc' },
    { kind: 'dir', path: 'sys' },
    { kind: 'dir', path: 'tmp' },
    { kind: 'file', path: 'bin/busybox', data: await staticBusybox(busybox), mode: 0o755 },
    { kind: 'symlink', path: 'bin/sh', target: 'busybox' },
    { kind: 'file', path: 'init', data: initScript(modules.map((m) => m.name)), mode: 0o755 },
    { kind: 'file', path: 'agent', data: AGENT_SCRIPT, mode: 0o644 },
  ];
  for (const module of modules) {
    entries.push({ kind: 'file', path: `lib/modules/${module.name}.ko`, data: await readFile(module.file) });
  }
  await chmod(dir, 0o755);
  const initrd = path.join(dir, 'initramfs.cpio');
  await writeFile(initrd, buildCpio(entries), { mode: 0o644 });
  const kernel = await bootableKernel(runner, path.join(bootDir, `vmlinuz-${kernelVersion}`), dir);
  return { kernel, initrd, cmdline: 'console=ttyS0 panic=-1 mitigations=off quiet', kernelVersion };
}

async function readRequired(file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (error) {
    throw new Error(`cannot read ${file}: ${(error as Error).message}; ${GUEST_PACKAGES_HINT}`, { cause: error });
  }
}

/** The busybox binary, refused when it is dynamically linked (it would find no libc in the guest). */
async function staticBusybox(file: string): Promise<Buffer> {
  const binary = await readRequired(file);
  if (binary.includes('/lib64/ld-linux')) throw new Error(`${file} is dynamically linked; ${GUEST_PACKAGES_HINT}`);
  return binary;
}

/** The newest kernel version with both `/boot/vmlinuz-<v>` and `/lib/modules/<v>/modules.dep`. */
export async function newestKernel(bootDir: string, modulesDir: string): Promise<string> {
  const names = await readdir(bootDir).catch(() => [] as string[]);
  const versions: string[] = [];
  for (const name of names) {
    if (!name.startsWith('vmlinuz-')) continue;
    const version = name.slice('vmlinuz-'.length);
    if (await stat(path.join(modulesDir, version, 'modules.dep')).then(() => true, () => false)) versions.push(version);
  }
  versions.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const newest = versions.at(-1);
  if (newest === undefined) throw new Error(`no kernel with modules under ${bootDir} and ${modulesDir}; ${GUEST_PACKAGES_HINT}`);
  return newest;
}

/** A module to insmod: its name and its file. */
export interface ModuleFile {
  name: string;
  file: string;
}

/**
 * The modules `wanted` need, dependencies first (what modprobe would load), from `modules.dep`.
 * Only uncompressed `.ko` files are accepted: busybox's insmod in the guest cannot unpack them.
 */
export async function moduleLoadOrder(kernelModulesDir: string, wanted: readonly string[]): Promise<ModuleFile[]> {
  const depText = await readFile(path.join(kernelModulesDir, 'modules.dep'), 'utf8');
  const deps = parseModulesDep(depText);
  const byName = new Map<string, string>();
  for (const file of deps.keys()) byName.set(moduleName(file), file);
  const order: ModuleFile[] = [];
  const seen = new Set<string>();
  const visit = (file: string): void => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const dep of deps.get(file) ?? []) visit(dep);
    if (!file.endsWith('.ko')) throw new Error(`module ${file} is compressed; the guest's insmod needs plain .ko files`);
    order.push({ name: moduleName(file), file: path.join(kernelModulesDir, file) });
  };
  for (const name of wanted) {
    const file = byName.get(name);
    // A module built into the kernel has no line in modules.dep: nothing to load.
    if (file !== undefined) visit(file);
  }
  return order;
}

/** `modules.dep` as module file → the files it depends on. */
export function parseModulesDep(text: string): Map<string, string[]> {
  const deps = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const rest = line.slice(colon + 1).trim();
    deps.set(line.slice(0, colon), rest.length > 0 ? rest.split(/\s+/) : []);
  }
  return deps;
}

function moduleName(file: string): string {
  return path.basename(file).replace(/\.ko(\.[a-z]+)?$/, '').replace(/-/g, '_');
}

/**
 * The kernel to hand QEMU: the ELF inside the bzImage when it is xz or gzip compressed (Debian's
 * is xz), else the bzImage itself (slower to boot, still correct).
 */
async function bootableKernel(runner: CommandRunner, bzImage: string, dir: string): Promise<string> {
  const image = await readRequired(bzImage);
  const out = path.join(dir, 'vmlinux');
  const xzAt = image.indexOf(XZ_MAGIC);
  if (xzAt >= 0) {
    await writeFile(`${out}.xz`, image.subarray(xzAt));
    // --single-stream: the bzImage goes on after the compressed kernel; that tail is ignored.
    const result = await runner.run('xz', ['--decompress', '--single-stream', '--force', '--', `${out}.xz`], { timeoutMs: 120_000, reject: false });
    if (result.exitCode === 0 && (await isElf(out))) return out;
  }
  const gzAt = image.indexOf(GZIP_MAGIC);
  if (gzAt >= 0) {
    try {
      const elf = gunzipSync(image.subarray(gzAt));
      if (elf.subarray(0, 4).equals(ELF_MAGIC)) {
        await writeFile(out, elf, { mode: 0o644 });
        return out;
      }
    } catch {
      // Not the kernel's stream after all: boot the bzImage.
    }
  }
  return bzImage;
}

async function isElf(file: string): Promise<boolean> {
  const head = Buffer.alloc(4);
  try {
    const handle = await open(file, 'r');
    try {
      await handle.read(head, 0, 4, 0);
    } finally {
      await handle.close();
    }
  } catch {
    return false;
  }
  if (!head.equals(ELF_MAGIC)) return false;
  await chmod(file, 0o644);
  return true;
}
