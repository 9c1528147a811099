/**
 * Entry of the detached kernel daemon (`node daemon-main.js <config.json>`), started by
 * `SimulatedHost.start({ detached: true })` / `ensureRunning`. It writes its pid file, tells its
 * parent it is ready on fd 3, and runs until a `shutdown` call or SIGTERM.
 */
import { createWriteStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { KernelDaemon } from './kernel-daemon.js';
import type { DetachedConfig } from './simulated-host.js';
import type { TargetAccess } from './target-access.js';
import { PIDFILE_RELATIVE } from './tool-protocol.js';

async function main(): Promise<void> {
  const configPath = process.argv[2];
  if (!configPath) throw new Error('usage: daemon-main.js <config.json>');
  const config = JSON.parse(await fsp.readFile(configPath, 'utf8')) as DetachedConfig;
  let targetAccess: TargetAccess | undefined;
  if (config.targetAccessFactory) {
    const mod = (await import(config.targetAccessFactory.module)) as Record<string, unknown>;
    const factory = mod[config.targetAccessFactory.exportName ?? 'default'];
    if (typeof factory !== 'function') throw new Error(`${config.targetAccessFactory.module} has no factory ${config.targetAccessFactory.exportName ?? 'default'}`);
    // A class (RealTargetAccess) is constructed; a plain function is called.
    const isClass = /^class[\s{]/.test(Function.prototype.toString.call(factory));
    const options = config.targetAccessFactory.options;
    targetAccess = isClass
      ? new (factory as new (o: unknown) => TargetAccess)(options)
      : await (factory as (o: unknown) => Promise<TargetAccess> | TargetAccess)(options);
  }
  const faultsFile = path.join(config.root, 'run/simhost/faults.json');
  const faults = config.faults ?? (JSON.parse(await fsp.readFile(faultsFile, 'utf8').catch(() => '{}')) as DetachedConfig['faults']);
  const daemon = await KernelDaemon.start({
    root: config.root,
    ...(config.deviceDelayMs === undefined ? {} : { deviceDelayMs: config.deviceDelayMs }),
    ...(config.initiatorName === undefined ? {} : { initiatorName: config.initiatorName }),
    ...(targetAccess ? { targetAccess } : {}),
    ...(faults ? { faults } : {}),
    ...(config.san ? { san: config.san } : {}),
  });
  const pidfile = path.join(daemon.root, PIDFILE_RELATIVE);
  await fsp.writeFile(pidfile, `${process.pid}\n`);
  let exiting = false;
  const exit = async (): Promise<void> => {
    if (exiting) return;
    exiting = true;
    await daemon.stop().catch(() => undefined);
    await fsp.rm(pidfile, { force: true });
    process.exit(0);
  };
  daemon.onShutdown = () => void exit();
  process.on('SIGTERM', () => void exit());
  process.on('SIGINT', () => void exit());
  // Tell the parent we listen; fd 3 is a pipe only when a parent waits on it.
  try {
    const ready = createWriteStream('', { fd: 3 });
    ready.end('ready\n');
    ready.on('error', () => undefined);
  } catch {
    // Started by hand: nobody waits.
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`simulated kernel daemon failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
