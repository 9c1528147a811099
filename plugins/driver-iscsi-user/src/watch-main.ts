/**
 * The `iscsi-user` transport's watcher process (`node dist/watch-main.js --data-dir DIR --host-root
 * ROOT --options JSON`), started detached by the driver (`ensureWatcher`), one per data dir: see
 * `runWatcher`. Its log (JSON lines on stdout) goes to `<dataDir>/driver-iscsi-user/qsd/watch.log`.
 */
import { parseArgs } from 'node:util';
import { z } from '@berth/core/zod';
import { parseWith, type Logger } from '@berth/core';
import { createHostServices } from '@berth/host';
import { createIscsiUserDriver } from './iscsi-user-driver.js';
import { messageOf } from './lun-plumbing.js';
import { zIscsiUserOptions } from './options.js';
import { runWatcher } from './watcher.js';

const zWatchArgs = z.object({
  'data-dir': z.string().startsWith('/'),
  'host-root': z.string().startsWith('/'),
  options: z.string().transform((text, ctx) => {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      ctx.addIssue({ code: 'custom', message: 'not JSON' });
      return z.NEVER;
    }
  }),
});

/** JSON lines on stdout (the log file): the watcher's logger. Nothing it logs is a secret. */
function lineLogger(bindings: Record<string, unknown>): Logger {
  const write = (level: string) => (obj: Record<string, unknown>, msg?: string): void => {
    process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), level, pid: process.pid, ...bindings, ...obj, ...(msg === undefined ? {} : { msg }) })}\n`);
  };
  return { debug: () => undefined, info: write('info'), warn: write('warn'), error: write('error'), child: (more) => lineLogger({ ...bindings, ...more }) };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { 'data-dir': { type: 'string' }, 'host-root': { type: 'string' }, options: { type: 'string' } }, strict: true });
  const args = parseWith(zWatchArgs, values, 'the iscsi-user watcher\'s arguments');
  const options = parseWith(zIscsiUserOptions, args.options, 'iscsi-user transport options');
  const logger = lineLogger({ component: 'iscsi-user-watch' });
  const host = createHostServices({ root: args['host-root'] });
  const controller = new AbortController();
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => controller.abort());
  // The driver's own restore rebuilds the daemon's other exports when a failed LUN took the daemon
  // down; this driver starts no watcher (this one is it).
  const driver = createIscsiUserDriver({ host, dataDir: args['data-dir'], options: { ...options, noopIntervalS: 0 }, logger });
  await runWatcher({ host, dataDir: args['data-dir'], options, logger, restore: async () => void (await driver.connected()) }, controller.signal);
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), level: 'error', pid: process.pid, msg: 'the iscsi-user watcher failed', err: messageOf(error) })}\n`);
    process.exit(1);
  },
);
