import 'reflect-metadata';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createHostFs, type HostServices } from '@berth/host';
import { BerthServiceImpl } from './berth-service.js';
import { DriverCatalog, PLUGIN_ABORT_GRACE_MS } from './catalog.js';
import { resolveConfig } from './config.js';
import type { Device } from './connection.js';
import type { TransportDriver } from './contracts/transport-driver.js';
import { BerthError } from './errors.js';
import { silentLogger } from './logger.js';
import { createMemoryStore } from './memory-store.js';
import { definePlugin, PLUGIN_API_VERSION } from './plugin.js';
import { attachmentLinkPath, createHostConsumer } from './host-consumer.js';
import { memCatalog, stubHostFs } from './test-support.js';
import { z } from './zod.js';

// A hostile (or careless) third-party plugin: what the catalog's guards make of it.

const never = <T>(): Promise<T> => new Promise<T>(() => undefined);
const connection = { driver_volume_type: 'x', data: {} };

function transport(overrides: Partial<TransportDriver> = {}): TransportDriver {
  return {
    name: 'x',
    protocols: ['x'],
    connectorProperties: async () => ({}),
    connect: async () => ({ path: '/dev/sdz', type: 'block' }),
    disconnect: async () => undefined,
    check: async () => ({ ok: true, summary: 'x' }),
    ...overrides,
  };
}

function catalogWith(fs: Record<string, unknown>, factories: Record<string, () => TransportDriver>): DriverCatalog {
  const catalog = new DriverCatalog({ fs } as unknown as HostServices, '/tmp', silentLogger);
  for (const [name, factory] of Object.entries(factories)) {
    catalog.add({ plugin: definePlugin({ name: `p-${name}`, apiVersion: PLUGIN_API_VERSION, register: (r) => r.transport(name, factory) }), packageName: `pkg-${name}`, version: undefined, options: undefined });
  }
  return catalog;
}

function timeoutSignal(ms: number): AbortSignal {
  const controller = new AbortController();
  setTimeout(() => controller.abort(new BerthError('TIMEOUT', 'the operation passed its deadline')), ms).unref();
  return controller.signal;
}

describe('a plugin call that ignores its AbortSignal', () => {
  it("is answered TIMEOUT, naming the plugin and the call, the grace after the deadline", async () => {
    const catalog = catalogWith(stubHostFs('/'), { x: () => transport({ connect: never }) });
    const started = Date.now();
    const error = await catalog.transport('x').connect(connection, { signal: timeoutSignal(50) }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('TIMEOUT');
    expect((error as BerthError).message).toBe("transport x (p-x)'s connect did not return within its deadline (it ignored the cancel)");
    expect((error as BerthError).hint).toMatch(/must honour the AbortSignal/);
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(PLUGIN_ABORT_GRACE_MS);
    expect(took).toBeLessThan(PLUGIN_ABORT_GRACE_MS + 1_500);
  });

  it('is answered CANCELLED when the signal was a cancel; disconnect is raced as well', async () => {
    const catalog = catalogWith(stubHostFs('/'), { x: () => transport({ disconnect: never }) });
    const controller = new AbortController();
    controller.abort(new BerthError('CANCELLED', 'cancelled by the user'));
    const error = await catalog.transport('x').disconnect(connection, undefined, { signal: controller.signal, force: false }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('CANCELLED');
    expect((error as BerthError).message).toMatch(/^transport x \(p-x\)'s disconnect did not return within/);
  });

  it("keeps the process alive while it is pending (the deadline's timer does not), and lets go when it settles", async () => {
    let settle!: () => void;
    const catalog = catalogWith(stubHostFs('/'), { x: () => transport({ disconnect: () => new Promise<void>((r) => (settle = r)) }) });
    const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timers();
    const pending = catalog.transport('x').disconnect(connection, undefined, { signal: new AbortController().signal, force: false });
    await new Promise((r) => setImmediate(r));
    expect(timers()).toBe(before + 1);
    settle();
    await pending;
    expect(timers()).toBe(before);
  });

  it('a plugin that honours the signal is answered by its own error, at once', async () => {
    const honours = transport({
      connect: (_c, context) =>
        new Promise((_resolve, reject) => context.signal.addEventListener('abort', () => reject(new BerthError('TIMEOUT', 'stopped as asked')))),
    });
    const catalog = catalogWith(stubHostFs('/'), { x: () => honours });
    const started = Date.now();
    const error = await catalog.transport('x').connect(connection, { signal: timeoutSignal(20) }).catch((e: unknown) => e);
    expect((error as BerthError).message).toBe('stopped as asked');
    expect(Date.now() - started).toBeLessThan(PLUGIN_ABORT_GRACE_MS);
  });

  it('an attach whose connect and undo disconnect never settle ends error_attaching with TIMEOUT, not attaching', async () => {
    const devices = new Map<string, Device>();
    const catalog = memCatalog(devices, never, { disconnect: never });
    const store = createMemoryStore();
    const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 200, undoTimeoutMs: 200 }, {});
    const service = new BerthServiceImpl(config, store, catalog, { hostname: 'unit-host', ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' }, silentLogger);
    await service.createVolume({ name: 'v1', sizeBytes: 2 ** 20 });
    const error = await service.attach({ volume: 'v1' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('TIMEOUT');
    expect((error as BerthError).message).toMatch(/connect did not return within its deadline \(it ignored the cancel\)/);
    // The undo's disconnect was answered too (TIMEOUT): the volume is in error, not stuck attaching.
    const volume = await service.getVolume('v1');
    expect(volume.status).toBe('error');
    expect((await store.attachments.list({ volumeId: volume.id })).map((a) => a.status)).toEqual(['error_attaching']);
    expect((await store.operations.list({ state: 'running' })).length).toBe(0);
  }, 15_000);
});

describe("a plugin whose transport factory throws", () => {
  it('makes its transport unavailable with PLUGIN_ERROR naming it; the others keep working; reported failed', async () => {
    const catalog = catalogWith(stubHostFs('/'), {
      bad: () => {
        throw new Error('options.secret is missing');
      },
      x: () => transport(),
    });
    const error = (() => {
      try {
        catalog.transport('bad');
      } catch (e) {
        return e;
      }
    })();
    expect(BerthError.is(error) && error.code).toBe('PLUGIN_ERROR');
    expect((error as BerthError).message).toBe('plugin p-bad could not build transport bad: options.secret is missing');
    expect(catalog.transports().map((t) => t.name)).toEqual(['x']);
    expect(catalog.selectTransport(connection, {} as never).name).toBe('x');
    expect(catalog.selectTransport(connection, {} as never, 'x').name).toBe('x');
    expect(catalog.plugins().failed).toEqual([{ packageName: 'pkg-bad', error: (error as BerthError).message }]);
    // Asked again: the same failure, the factory is not run again, reported once.
    expect(() => catalog.transport('bad')).toThrow(/could not build transport bad/);
    expect(catalog.plugins().failed).toHaveLength(1);
  });

  it("options refused at the plugin's first use (acceptsNoOptions) fail its transport only", () => {
    const catalog = catalogWith(stubHostFs('/'), { x: () => transport() });
    catalog.add(
      { plugin: definePlugin({ name: 'strict', apiVersion: PLUGIN_API_VERSION, optionsSchema: z.object({ secret: z.string() }), register: (r) => r.transport('strict', () => transport({ name: 'strict' })) }), packageName: 'pkg-strict', version: undefined, options: undefined },
      { acceptsNoOptions: true },
    );
    expect(() => catalog.transport('strict')).toThrow(/invalid options for strict/);
    expect(catalog.transports().map((t) => t.name)).toEqual(['x']);
  });

  it('berth doctor reports it failed; an attach through another transport works', async () => {
    const devices = new Map<string, Device>();
    const catalog = memCatalog(devices);
    catalog.add({
      plugin: definePlugin({ name: 'bad', apiVersion: PLUGIN_API_VERSION, register: (r) => r.transport('bad', () => { throw new Error('boom'); }) }),
      packageName: 'berth-plugin-bad',
      version: undefined,
      options: undefined,
    });
    const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 5_000, undoTimeoutMs: 5_000 }, {});
    const service = new BerthServiceImpl(config, createMemoryStore(), catalog, { hostname: 'unit-host', ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' }, silentLogger);
    await service.createVolume({ name: 'v1', sizeBytes: 2 ** 20 });
    expect((await service.attach({ volume: 'v1', transport: 'mem' })).attachment?.status).toBe('attached');
    const doctor = await service.doctor();
    expect(doctor.find((e) => e.kind === 'transport' && e.name === 'bad')?.result).toMatchObject({ ok: false, summary: 'plugin bad could not build transport bad: boom' });
    expect(doctor.find((e) => e.kind === 'plugin' && e.name === 'berth-plugin-bad')?.result.ok).toBe(false);
  });
});

describe("the device a transport's connect returns", () => {
  const roots: string[] = [];
  afterEach(async () => {
    for (const root of roots.splice(0)) await rm(root, { recursive: true, force: true });
  });

  const connectTo = (fs: unknown, device: string, through = connection) =>
    catalogWith(fs as Record<string, unknown>, { x: () => transport({ connect: async () => ({ path: device, type: 'block' }) }) })
      .transport('x')
      .connect(through, { signal: new AbortController().signal });

  it('is accepted as a regular file when it is the very file the connection named (a file-backed transport handing back its volume\'s storage), not another one', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'berth-guard-named-'));
    roots.push(dir);
    const own = path.join(dir, 'own.img');
    const other = path.join(dir, 'other.img');
    await writeFile(own, '');
    await writeFile(other, '');
    const named = { ...connection, data: { ...connection.data, device_path: own } };
    await expect(connectTo(createHostFs('/'), own, named)).resolves.toMatchObject({ path: own });
    await expect(connectTo(createHostFs('/'), other, named)).rejects.toThrow(/is a regular file, not a block device/);
  });

  it('is refused (DRIVER_ERROR naming the plugin) when it is a character device, a regular file or missing on the machine', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'berth-guard-'));
    roots.push(dir);
    await writeFile(path.join(dir, 'disk.img'), 'not a disk');
    const machine = createHostFs('/');
    for (const [device, why] of [
      ['/dev/null', 'is not a block device'],
      [path.join(dir, 'disk.img'), 'is a regular file, not a block device'],
      [path.join(dir, 'gone'), 'does not exist on the host'],
    ] as const) {
      const error = await connectTo(machine, device).catch((e: unknown) => e);
      expect(BerthError.is(error) && error.code).toBe('DRIVER_ERROR');
      expect((error as BerthError).message).toBe(`transport x (p-x) returned device ${device}, which ${why}`);
    }
  });

  it("is accepted when it is a block device (through a link), and as a regular file only in the host's /dev (a kernel model's disk) — the same rule whatever the root", async () => {
    await expect(connectTo(stubHostFs('/'), '/dev/sdz')).resolves.toMatchObject({ path: '/dev/sdz' });
    const dir = await mkdtemp(path.join(os.tmpdir(), 'berth-guard-root-'));
    roots.push(dir);
    const { mkdir } = await import('node:fs/promises');
    await mkdir(path.join(dir, 'dev', 'shm'), { recursive: true });
    await mkdir(path.join(dir, 'var'));
    for (const file of ['dev/sda', 'dev/shm/disk.img', 'var/disk.img']) await writeFile(path.join(dir, file), '');
    const rooted = createHostFs(dir);
    await expect(connectTo(rooted, '/dev/sda')).resolves.toMatchObject({ path: '/dev/sda' });
    await expect(connectTo(rooted, '/dev/sdb')).rejects.toThrow(/does not exist on the host/);
    // Outside /dev (or in /dev/shm, where files are files), a regular file is refused on this root too.
    await expect(connectTo(rooted, '/var/disk.img')).rejects.toThrow(/is a regular file, not a block device/);
    await expect(connectTo(rooted, '/dev/shm/disk.img')).rejects.toThrow(/is a regular file, not a block device/);
  });
});

describe('a detach whose transport was uninstalled', () => {
  const roots: string[] = [];
  afterEach(async () => {
    for (const root of roots.splice(0)) await rm(root, { recursive: true, force: true });
  });

  it('is refused before anything is touched (UNPROCESSABLE naming the transport): the names and the attachment stay', async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), 'berth-guard-detach-'));
    roots.push(root);
    const fs = createHostFs(root);
    const consumer = { ...createHostConsumer(fs), name: 'mem' };
    const store = createMemoryStore();
    const config = resolveConfig({ dataDir: '/nonexistent/berth-unit', defaultBackend: 'mem', consumer: 'mem', operationTimeoutMs: 5_000, undoTimeoutMs: 5_000 }, {});
    const identity = { hostname: 'unit-host', ips: ['127.0.0.1'], platform: 'x86_64', osType: 'linux' };
    const devices = new Map<string, Device>();
    const before = new BerthServiceImpl(config, store, memCatalog(devices, async () => ({ path: '/dev/loop3', type: 'block' }), { consumer }), identity, silentLogger);
    await before.createVolume({ name: 'v1', sizeBytes: 2 ** 20 });
    const attachment = (await before.attach({ volume: 'v1' })).attachment!;
    expect(await fs.readlink(attachmentLinkPath(attachment.id))).toBe('/dev/loop3');

    const calls: string[] = [];
    const after = new BerthServiceImpl(config, store, memCatalog(devices, undefined, { consumer, noTransport: true, calls }), identity, silentLogger);
    const error = await after.detach({ volume: 'v1' }).catch((e: unknown) => e);
    expect(BerthError.is(error) && error.code).toBe('UNPROCESSABLE');
    expect((error as BerthError).message).toMatch(/^volume v1 was attached through transport mem, which cannot disconnect it here: no transport named mem is installed/);
    expect((error as BerthError).hint).toMatch(/reinstall the plugin that provides transport mem/);
    expect(calls).toEqual([]);
    expect(await fs.readlink(attachmentLinkPath(attachment.id))).toBe('/dev/loop3');
    expect((await store.attachments.require(attachment.id)).status).toBe('attached');
    expect((await after.getVolume('v1')).status).toBe('in-use');
  });
});
