import { lstat, rm } from 'node:fs/promises';
import { execa } from 'execa';

/** One row of `losetup --json --list`. */
export interface LoopDevice {
  name: string;
  'back-file': string | null;
}

/** Every loop device on the machine. */
export async function listLoopDevices(): Promise<LoopDevice[]> {
  const { stdout } = await execa('losetup', ['--json', '--list'], { timeout: 10_000 });
  // With no loop device attached losetup prints nothing at all.
  if (stdout.trim() === '') return [];
  return (JSON.parse(stdout) as { loopdevices: LoopDevice[] }).loopdevices;
}

/** The loop devices whose backing file is `file` (losetup appends " (deleted)" to removed files). */
export async function loopDevicesBacking(file: string): Promise<string[]> {
  const devices = await listLoopDevices();
  return devices.filter((d) => d['back-file'] === file || d['back-file'] === `${file} (deleted)`).map((d) => d.name);
}

/** Safety net: detach every loop device whose backing file is under `dir`. Returns what it detached. */
export async function detachLoopDevicesUnder(dir: string): Promise<string[]> {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const leaked = (await listLoopDevices()).filter((d) => d['back-file']?.startsWith(prefix) === true);
  for (const device of leaked) {
    await execa('losetup', ['--detach', device.name], { timeout: 10_000, reject: false });
  }
  return leaked.map((d) => d.name);
}

/** Safety net: remove the `/dev/berth/<id>` links of these volumes (UUIDs: only this test made them). */
export async function removeBerthLinks(volumeIds: Iterable<string>): Promise<void> {
  for (const id of volumeIds) {
    const link = `/dev/berth/${id}`;
    const stat = await lstat(link).catch(() => undefined);
    if (stat?.isSymbolicLink() === true) await rm(link, { force: true });
  }
}
