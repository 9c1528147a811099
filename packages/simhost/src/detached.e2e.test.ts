import { execFile } from 'node:child_process';
import fs, { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createCommandRunner } from '@berth/host';
import { afterEach, describe, expect, it } from 'vitest';
import { SimulatedHost } from './simulated-host.js';
import { PORTAL, VOL1, iscsiadm, loginManual } from './test-helpers.js';

const started: SimulatedHost[] = [];
const roots: string[] = [];

afterEach(async () => {
  for (const sim of started.splice(0)) await sim.stop();
  for (const root of roots.splice(0)) await fsp.rm(root, { recursive: true, force: true });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('the detached kernel daemon', { timeout: 60_000 }, () => {
  it('started by several processes at once: one daemon, which all of them reach; stop() leaves none', async () => {
    const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'berth-simhost-test-'));
    roots.push(root);
    const daemons = (): number[] =>
      fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name)).filter((pid) => {
        try {
          const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
          return cmdline.includes('daemon-main.js') && cmdline.includes(root);
        } catch {
          return false;
        }
      }).map(Number);
    // Real processes, as three `berth --simulate` commands starting together are.
    const dist = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'index.js');
    const script = `const { SimulatedHost } = await import(${JSON.stringify(dist)}); const h = await SimulatedHost.ensureRunning(${JSON.stringify(root)}, { deviceDelayMs: 5 }); process.stdout.write(JSON.stringify((await h.state()).sessions.length));`;
    const runs = await Promise.all(
      [1, 2, 3].map(
        () =>
          new Promise<{ code: number | null; out: string }>((done) => {
            execFile(process.execPath, ['--input-type=module', '-e', script], (error, out) => done({ code: error === null ? 0 : ((error as { code?: number }).code ?? -1), out }));
          }),
      ),
    );
    try {
      expect(runs).toEqual([{ code: 0, out: '0' }, { code: 0, out: '0' }, { code: 0, out: '0' }]);
      expect(daemons()).toHaveLength(1);
      await (await SimulatedHost.connect(root)).stop();
      expect(daemons()).toEqual([]);
    } finally {
      // Whatever the outcome, no daemon of this root outlives the test.
      for (const pid of daemons()) process.kill(pid, 'SIGKILL');
    }
  });

  it('outlives its starter: later "invocations" connect to it, and stop() ends it', async () => {
    const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'berth-simhost-test-'));
    roots.push(root);
    const first = await SimulatedHost.ensureRunning(root, { deviceDelayMs: 5 });
    started.push(first);
    const pid = Number((await fsp.readFile(path.join(root, 'run/simhost/kernel.pid'), 'utf8')).trim());
    expect(pid).not.toBe(process.pid);
    expect(alive(pid)).toBe(true);
    await first.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: { 1: { sizeBytes: 1 << 20 } } });

    // A later CLI run: only the root is known.
    const again = await SimulatedHost.ensureRunning(root);
    const services = again.hostServices();
    const { host } = await loginManual(again, services, VOL1);
    await services.fs.writeFile(`/sys/class/scsi_host/host${host}/scan`, '- - 1');
    await services.waiter.waitForPath('/dev/sda', { timeoutMs: 5_000 });
    const third = await SimulatedHost.connect(root);
    expect((await third.state()).devices.map((d) => d.name)).toEqual(['sda']);
    await third.faults.loseSession(1);
    expect((await third.state()).sessions[0]?.state).toBe('FAILED');

    await third.stop();
    expect(alive(pid)).toBe(false);
    // Everything was logged out; the given root stays.
    expect(await fsp.readdir(path.join(root, 'sys/devices/platform'))).toEqual([]);
    await expect(fsp.stat(path.join(root, 'dev/sda'))).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(SimulatedHost.connect(root)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    // Without the daemon iscsiadm says what open-iscsi says without iscsid.
    const r = await createCommandRunner().run(path.join(root, 'bin/iscsiadm'), ['-m', 'session'], { reject: false });
    expect(r).toMatchObject({ exitCode: 20, stdout: '', stderr: 'iscsiadm: can not connect to iSCSI daemon (111)!\n' });
  });

  it('reads faults.json at start and removes its temp root on stop', async () => {
    const sim = await SimulatedHost.start({ detached: true, faults: { loginFailures: [{ iqn: VOL1, exitCode: 19 }] } });
    started.push(sim);
    await sim.san.addTarget({ iqn: VOL1, portals: [PORTAL], luns: {} });
    const services = sim.hostServices();
    await iscsiadm(services, '-m', 'node', '-T', VOL1, '-p', PORTAL, '--op', 'new');
    expect((await iscsiadm(services, '-m', 'node', '-T', VOL1, '-p', PORTAL, '--login')).exitCode).toBe(19);
    expect(await sim.faults.current()).toMatchObject({ loginFailures: [{ iqn: VOL1, exitCode: 19 }] });
    await sim.faults.clear();
    expect((await iscsiadm(services, '-m', 'node', '-T', VOL1, '-p', PORTAL, '--login')).exitCode).toBe(0);
    await sim.stop();
    await expect(fsp.stat(sim.root)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
