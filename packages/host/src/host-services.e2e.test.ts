import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createHostServices } from './host-services.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'berth-services-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('createHostServices', () => {
  it('points the runner, the filesystem and the waiter at one simulated host', async () => {
    const root = path.join(dir, 'root');
    const bin = path.join(dir, 'bin');
    await mkdir(path.join(root, 'sys/class/scsi_host/host3'), { recursive: true });
    await writeFile(path.join(root, 'sys/class/scsi_host/host3/scan'), '');
    await mkdir(bin);
    // A fake tool, found before the real one, that makes a device appear in the simulated root.
    await writeFile(
      path.join(bin, 'iscsiadm'),
      '#!/bin/sh\nmkdir -p "$SIM_ROOT/dev" && : > "$SIM_ROOT/dev/sdb" && echo "Login to [iface: default] successful."\n',
    );
    await chmod(path.join(bin, 'iscsiadm'), 0o755);

    const host = createHostServices({ root, pathPrepend: [bin], env: { SIM_ROOT: root }, defaultTimeoutMs: 5000 });
    expect(host.fs.root).toBe(root);

    const waiting = host.waiter.waitForPath('/dev/sdb', { timeoutMs: 5000 });
    const login = await host.runner.run('iscsiadm', ['-m', 'node', '--login']);
    expect(login.stdout).toContain('successful');
    await waiting;

    await host.fs.writeFile('/sys/class/scsi_host/host3/scan', '- - -');
    expect(await readFile(path.join(root, 'sys/class/scsi_host/host3/scan'), 'utf8')).toBe('- - -');
    await expect(host.fs.writeFile('/sys/class/scsi_host/host9/scan', '- - -')).rejects.toThrow();
  });

  it('defaults to the machine itself', async () => {
    const host = createHostServices();
    expect(host.fs.root).toBe('/');
    expect((await host.runner.run('uname', ['-s'])).stdout).toBe('Linux\n');
    await host.waiter.waitForPath('/proc/self', { timeoutMs: 1000 });
  });
});
