// A berth transport plugin: connects the `file` volumes under one directory as loop devices with
// 4096-byte logical sectors (berth's built-in `loop` transport keeps 512). To write your own, keep
// the shape and replace the losetup calls with your tool's.
import {
  BerthError,
  definePlugin,
  PLUGIN_API_VERSION,
  type ConnectedDevice,
  type ConnectionInfo,
  type PluginContext,
  type TransportDriver,
} from '@berth/core';
import { z } from '@berth/core/zod';

/** The transport's name: given to `registry.transport()`, recorded on every attachment. */
export const NAME = 'loop-4k';

/** The plugin's options (config file: `pluginOptions["berth-transport-4k"]`), validated by berth. */
export const zOptions = z.object({
  /**
   * Connect only the files under this directory; the built-in `loop` transport keeps the others.
   * Unset, the plugin connects nothing: installed, it must not take over every volume (a plugin
   * that did gave existing volumes 4 KiB sectors at their next attach).
   */
  directory: z.string().startsWith('/').optional(),
  /** Logical sector size of the loop devices, in bytes. */
  sectorSize: z.union([z.literal(512), z.literal(1024), z.literal(2048), z.literal(4096)]).default(4096),
  /** Timeout of one losetup run, and of the wait for a device node, in ms. */
  timeoutMs: z.number().int().positive().default(10_000),
});

/** The parsed options. */
export type Options = z.output<typeof zOptions>;

// `losetup --json --list`: what this transport reads of it.
const zLosetupList = z.object({
  loopdevices: z.array(z.object({ name: z.string(), 'back-file': z.string().nullable(), 'log-sec': z.number() })),
});

/** Build the transport; everything it does to the machine goes through `ctx.host`. */
export function createTransport(ctx: PluginContext<Options>): TransportDriver {
  const { runner, waiter } = ctx.host;
  const { directory, sectorSize, timeoutMs } = ctx.options;
  const under = directory === undefined ? undefined : directory.endsWith('/') ? directory : `${directory}/`;

  // One connect or disconnect of a file at a time: five concurrent connects make one device.
  const queues = new Map<string, Promise<unknown>>();
  function serially<T>(file: string, work: () => Promise<T>): Promise<T> {
    const result = (queues.get(file) ?? Promise.resolve()).then(work, work);
    const tail = result.catch(() => undefined);
    queues.set(file, tail);
    void tail.then(() => queues.get(file) === tail && queues.delete(file));
    return result;
  }

  function fileOf(connection: ConnectionInfo): string {
    const file = connection.data['device_path'];
    if (typeof file === 'string' && file.startsWith('/')) return file;
    throw new BerthError('VALIDATION', `${NAME}: the connection has no absolute device_path`, {
      hint: 'attach a volume of a backend that exports files, such as the built-in `file` backend',
    });
  }

  /** Loop devices with our sector size, and the files behind them. */
  async function loops(signal?: AbortSignal): Promise<Array<{ path: string; file: string }>> {
    const { stdout } = await runner.run('losetup', ['--json', '--list', '--output', 'NAME,BACK-FILE,LOG-SEC'], { signal, timeoutMs });
    // losetup prints nothing at all when no loop device is set up.
    const list = stdout.trim() === '' ? { loopdevices: [] } : zLosetupList.parse(JSON.parse(stdout));
    return list.loopdevices
      .filter((loop) => loop['log-sec'] === sectorSize && loop['back-file'] !== null)
      .map((loop) => ({ path: loop.name, file: loop['back-file'] ?? '' }));
  }

  return {
    name: NAME,
    protocols: ['file'],
    // The built-in `loop` transport also connects `file` volumes, at priority 0: berth asks each
    // transport that `accepts` a connection and picks the highest priority.
    priority: 10,
    // The keys of a `connected()` source that name the volume itself: `berth reconcile` matches a
    // listed device to a volume (and an attachment) by these only.
    sourceKeys: ['device_path'],
    accepts(connection) {
      const file = connection.data['device_path'];
      return typeof file === 'string' && under !== undefined && file.startsWith(under);
    },
    async connectorProperties() {
      return {};
    },
    async connect(connection, { signal }) {
      const file = fileOf(connection);
      return serially(file, async () => {
        signal.throwIfAborted();
        // Idempotent: a file already connected gives back its device.
        const existing = (await loops(signal)).find((loop) => loop.file === file);
        const path =
          existing?.path ??
          (await runner.run('losetup', ['--find', '--show', '--sector-size', String(sectorSize), file], { signal, timeoutMs })).stdout.trim();
        await waiter.waitForPath(path, { timeoutMs, signal, what: `loop device ${path}` });
        return { path, type: 'block' };
      });
    },
    async disconnect(connection, device, { signal }) {
      const file = fileOf(connection);
      await serially(file, async () => {
        // Only a loop device that still backs this file is detached: if the kernel gave the name
        // to another file since, that device is not ours. A file with no device is success.
        for (const loop of await loops(signal)) {
          if (loop.file === file && (device === undefined || device.path === loop.path)) {
            await runner.run('losetup', ['--detach', loop.path], { signal, timeoutMs });
          }
        }
      });
    },
    async connected(): Promise<ConnectedDevice[]> {
      // What `berth reconcile` compares with berth's records (and the conformance suite checks).
      return (await loops())
        .filter((loop) => under !== undefined && loop.file.startsWith(under))
        .map((loop) => ({ device: { path: loop.path, type: 'block' }, source: { device_path: loop.file } }));
    },
    async check() {
      const result = await runner.run('losetup', ['--version'], { timeoutMs, reject: false });
      if (result.exitCode !== 0) {
        return { ok: false, summary: `${NAME}: losetup cannot run`, fix: 'install util-linux (apt-get install util-linux)' };
      }
      if (directory === undefined) {
        return { ok: true, summary: `${NAME}: connects nothing until its directory option is set`, fix: 'set pluginOptions["berth-transport-4k"].directory in the config' };
      }
      return { ok: true, summary: `${NAME}: ${sectorSize}-byte sectors for files under ${directory} (${result.stdout.trim()})` };
    },
  };
}

/** The plugin: berth imports this default export (package.json `"berth": {"entry": ...}`). */
export default definePlugin({
  name: 'berth-transport-4k',
  apiVersion: PLUGIN_API_VERSION,
  optionsSchema: zOptions,
  register(registry) {
    registry.transport(NAME, createTransport);
  },
});
