import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { hostFacts } from '@berth/host';
import { BerthError, zConnectionInfo, type BackendVolume, type Connector, type VolumeBackend } from '@berth/core';

/** What a backend's conformance run needs. */
export interface BackendConformanceSetup {
  /** The backend under test. */
  backend: VolumeBackend;
  /** Remove everything the setup made (directories, daemons); runs once after the suite. */
  cleanup(): Promise<void>;
  /** A connector the backend must accept (default: this host, `{ host: hostname }`). */
  connector?: Connector;
  /** Size of the volumes the suite creates, in bytes (default 64 MiB). */
  sizeBytes?: number;
  /** Whether the volume's storage exists on the backend (checks create and delete when given). */
  exists?(volume: BackendVolume): Promise<boolean>;
  /** The volume's size on the backend in bytes (checks extend when given). */
  sizeOf?(volume: BackendVolume): Promise<number>;
}

/** Options of a backend conformance run. */
export interface BackendConformanceOptions {
  /** Timeout of each test and of each backend call, in ms (default 30 000). */
  timeoutMs?: number;
}

/** Ids and names that try to leave the backend's storage. */
const TRAVERSAL_IDS = ['../../escape', '/etc/passwd', 'a/../../b', '..', '.', 'x\0y', ''];
const TRAVERSAL_NAMES = ['../../escape', '/etc/berth-escape', 'a/../../escape'];

async function outcomeOf<T>(promise: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  try {
    return { ok: true, value: await promise };
  } catch (error) {
    return { ok: false, error };
  }
}

/**
 * The suite every volume backend must pass: idempotent create/delete and export/unexport,
 * connection_info that parses as Cinder's, extend that grows, and no way out of its storage through
 * a volume id or name. Call it at the top level of a test file; it registers a vitest `describe`.
 */
export function describeBackendConformance(
  name: string,
  setup: () => Promise<BackendConformanceSetup>,
  options: BackendConformanceOptions = {},
): void {
  const timeoutMs = options.timeoutMs ?? 30_000;

  describe(`backend conformance: ${name}`, () => {
    let env: BackendConformanceSetup | undefined;
    // Every volume a test made, deleted after it even when the test failed.
    const made: BackendVolume[] = [];

    function current(): BackendConformanceSetup {
      if (!env) throw new Error('the conformance setup did not finish (see the beforeAll error)');
      return env;
    }

    function signal(): AbortSignal {
      return AbortSignal.timeout(timeoutMs);
    }

    function connector(): Connector {
      return current().connector ?? { host: hostFacts().hostname };
    }

    function newVolume(overrides: Partial<BackendVolume> = {}): BackendVolume {
      const volume: BackendVolume = {
        id: randomUUID(),
        name: `conformance-${randomUUID().slice(0, 8)}`,
        sizeBytes: current().sizeBytes ?? 64 * 1024 * 1024,
        providerLocation: null,
        ...overrides,
      };
      made.push(volume);
      return volume;
    }

    async function create(volume: BackendVolume): Promise<BackendVolume> {
      const created = await current().backend.create(volume, signal());
      volume.providerLocation = created.providerLocation;
      return volume;
    }

    beforeAll(async () => {
      env = await setup();
    }, timeoutMs);

    afterEach(async () => {
      const failures: string[] = [];
      for (const volume of made.splice(0)) {
        // Traversal attempts are refused, so there is nothing of theirs to delete.
        if (TRAVERSAL_IDS.includes(volume.id)) continue;
        try {
          await current().backend.terminateConnection(volume, connector(), signal());
          await current().backend.delete(volume, signal());
        } catch (error) {
          failures.push(error instanceof Error ? error.message : String(error));
        }
      }
      if (failures.length > 0) throw new Error(`cleanup deletes failed: ${failures.join('; ')}`);
    }, timeoutMs);

    afterAll(async () => {
      await env?.cleanup();
    }, timeoutMs);

    it('check() says whether it works here, in one line', async () => {
      const result = await current().backend.check();
      expect(typeof result.ok).toBe('boolean');
      expect(result.summary).toMatch(/\S/);
      expect(result.summary).not.toContain('\n');
      if (!result.ok) expect(result.fix ?? '').toMatch(/\S/);
    });

    it('create makes the volume and says where', async () => {
      const volume = await create(newVolume());
      expect(volume.providerLocation).toMatch(/\S/);
      if (current().exists) expect(await current().exists?.(volume)).toBe(true);
      if (current().sizeOf) expect(await current().sizeOf?.(volume)).toBeGreaterThanOrEqual(volume.sizeBytes);
    }, timeoutMs);

    it('create twice is the same volume', async () => {
      const volume = newVolume();
      const first = await current().backend.create(volume, signal());
      const second = await current().backend.create(volume, signal());
      volume.providerLocation = first.providerLocation;
      expect(second.providerLocation).toBe(first.providerLocation);
    }, timeoutMs);

    it('delete removes the volume, and twice succeeds', async () => {
      const volume = await create(newVolume());
      await current().backend.delete(volume, signal());
      if (current().exists) expect(await current().exists?.(volume)).toBe(false);
      await current().backend.delete(volume, signal());
    }, timeoutMs);

    it('delete of a never-created volume succeeds', async () => {
      await current().backend.delete(newVolume(), signal());
    }, timeoutMs);

    it('initializeConnection returns a Cinder connection_info, the same each time', async () => {
      const volume = await create(newVolume());
      const first = await current().backend.initializeConnection(volume, connector(), signal());
      const parsed = zConnectionInfo.safeParse(first);
      expect(parsed.success, parsed.success ? '' : parsed.error.message).toBe(true);
      const second = await current().backend.initializeConnection(volume, connector(), signal());
      expect(second.driver_volume_type).toBe(first.driver_volume_type);
    }, timeoutMs);

    it('terminateConnection twice succeeds, and without an export too', async () => {
      const volume = await create(newVolume());
      await current().backend.terminateConnection(volume, connector(), signal());
      await current().backend.initializeConnection(volume, connector(), signal());
      await current().backend.terminateConnection(volume, connector(), signal());
      await current().backend.terminateConnection(volume, connector(), signal());
    }, timeoutMs);

    it('missingStorage (when supported) lists exactly the asked volumes whose storage is gone: never created, deleted — not a live one', async () => {
      const { backend } = current();
      if (!backend.missingStorage) return;
      const live = await create(newVolume());
      const deleted = await create(newVolume());
      await backend.delete(deleted, signal());
      const never = newVolume();
      expect(await backend.missingStorage([], signal())).toEqual([]);
      expect((await backend.missingStorage([live, deleted, never], signal())).sort()).toEqual([deleted.id, never.id].sort());
      expect(await backend.missingStorage([live], signal())).toEqual([]);
    }, timeoutMs);

    it('shortStorage (when supported) lists exactly the asked volumes whose storage is smaller than their size, with that size: not a whole one, nor one that is gone', async () => {
      const { backend } = current();
      if (!backend.shortStorage) return;
      const whole = await create(newVolume());
      const deleted = await create(newVolume());
      await backend.delete(deleted, signal());
      expect(await backend.shortStorage([], signal())).toEqual([]);
      expect(await backend.shortStorage([whole, deleted, newVolume()], signal())).toEqual([]);
      // The record says more than the storage holds (as after a cut behind berth's back): short, with the storage's size.
      const bigger = { ...whole, sizeBytes: whole.sizeBytes * 4 };
      const short = await backend.shortStorage([bigger, deleted], signal());
      expect(short.map((s) => s.id)).toEqual([whole.id]);
      expect(short[0]!.sizeBytes).toBeGreaterThanOrEqual(whole.sizeBytes);
      expect(short[0]!.sizeBytes).toBeLessThan(bigger.sizeBytes);
    }, timeoutMs);

    it('upkeep (when supported) is quiet on a healthy backend: twice in a row, exports untouched, and honours an aborted signal', async () => {
      const { backend } = current();
      if (!backend.upkeep) return;
      const volume = await create(newVolume());
      const first = await backend.initializeConnection(volume, connector(), signal());
      await backend.upkeep(signal());
      await backend.upkeep(signal());
      const again = await backend.initializeConnection(volume, connector(), signal());
      expect(again).toEqual(first);
      // An aborted round ends (resolves or rejects) instead of running on.
      await backend.upkeep(AbortSignal.abort()).catch(() => undefined);
      await backend.terminateConnection(volume, connector(), signal());
    }, timeoutMs);

    it('extend grows the volume (when supported)', async () => {
      const { backend, sizeOf } = current();
      if (!backend.extend) return;
      const volume = await create(newVolume());
      const bigger = volume.sizeBytes * 2;
      await backend.extend(volume, bigger, signal());
      volume.sizeBytes = bigger;
      if (sizeOf) expect(await sizeOf(volume)).toBeGreaterThanOrEqual(bigger);
      // A retried extend to the same size is not an error.
      await backend.extend(volume, bigger, signal());
    }, timeoutMs);

    it('refuses volume ids that try to leave its storage', async () => {
      for (const id of TRAVERSAL_IDS) {
        const volume = newVolume({ id });
        const created = await outcomeOf(current().backend.create(volume, signal()));
        expect(created.ok, `create with id ${JSON.stringify(id)} was accepted`).toBe(false);
        if (!created.ok) expect(BerthError.is(created.error), `id ${JSON.stringify(id)}: not a BerthError`).toBe(true);
        const deleted = await outcomeOf(current().backend.delete(volume, signal()));
        expect(deleted.ok, `delete with id ${JSON.stringify(id)} was accepted`).toBe(false);
        const exported = await outcomeOf(current().backend.initializeConnection(volume, connector(), signal()));
        expect(exported.ok, `initializeConnection with id ${JSON.stringify(id)} was accepted`).toBe(false);
      }
    }, timeoutMs);

    it('never puts a volume name into a path', async () => {
      for (const name of TRAVERSAL_NAMES) {
        const volume = newVolume({ name });
        const created = await outcomeOf(current().backend.create(volume, signal()));
        if (!created.ok) {
          expect(BerthError.is(created.error)).toBe(true);
          continue;
        }
        volume.providerLocation = created.value.providerLocation;
        expect(created.value.providerLocation).not.toContain(name);
        expect(created.value.providerLocation.split('/')).not.toContain('..');
      }
    }, timeoutMs);
  });
}
