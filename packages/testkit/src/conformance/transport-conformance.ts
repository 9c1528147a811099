import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createHostServices, type HostFs } from '@berth/host';
import { BerthError, sourceMatches, zDevice, zDeviceIdentity, type ConnectionInfo, type Device, type TransportDriver } from '@berth/core';

/** What a transport's conformance run needs: the driver and a source of fresh connections. */
export interface TransportConformanceSetup {
  /** The driver under test. */
  driver: TransportDriver;
  /** A new connection_info the driver can connect (a fresh volume each call). */
  makeConnection(): Promise<ConnectionInfo>;
  /** Remove everything the setup made (volumes, temp dirs); runs once after the suite. */
  cleanup(): Promise<void>;
  /** Where device nodes are checked (default: the real machine's `/`). */
  fs?: HostFs;
  /**
   * Whether something is connected for `connection` (for `device` only, when given). Default: the
   * driver's `connected()` lists an entry whose source matches the connection's data by the
   * driver's `sourceKeys`, as reconcile matches it (and whose
   * path is the device's); without `connected()`, whether the device node exists.
   */
  isConnected?(connection: ConnectionInfo, device?: Device): Promise<boolean>;
  /**
   * A connection for the same volume that this transport must refuse to connect while
   * `connection` is connected (the loop transport: the same file read-only after read-write).
   */
  conflictingConnection?(connection: ConnectionInfo): ConnectionInfo;
  /**
   * Make `device.path` name another device, as the kernel does when it reuses a freed name (the
   * loop transport: detach it by hand and attach another file to that very node). Resolves with a
   * check that the other device is still there and a cleanup that removes it.
   */
  reusePath?(device: Device): Promise<{ present(): Promise<boolean>; cleanup(): Promise<void> }>;
  /**
   * Take the storage behind a connected device away behind berth's back, as a user could (the
   * loop transport: delete the volume file; the device keeps it). A transport that reports
   * `ConnectedDevice.storageGone` provides it, and the suite checks the rule: the device is
   * listed with `storageGone`, a disconnect without `force` refuses it having touched nothing
   * (`CONFLICT`, `details.reason: 'storage-gone'`, `untouched`), and a forced one lets go of it.
   */
  loseStorage?(connection: ConnectionInfo, device: Device): Promise<void>;
}

/** Options of a transport conformance run. */
export interface TransportConformanceOptions {
  /** Timeout of each test and of each driver call, in ms (default 30 000). */
  timeoutMs?: number;
  /**
   * Check the device identity rule of `TransportDriver` (issue 9): `connect` returns the device's
   * identity, `disconnect` never touches a device in `inUse` nor one whose path now names another
   * device. Every transport berth ships must keep it; a transport whose run does not set this yet
   * is not checked for it (the iSCSI transports, until they implement the rule).
   */
  identity?: boolean;
  /** How many connects of one connection run at once in the concurrency test (default 5). */
  concurrentConnects?: number;
}

/**
 * The suite every transport driver must pass: idempotent connect and disconnect, one device per
 * connection under concurrency, cancellation that leaves nothing behind, a quiet `upkeep` (when
 * it has one), and a working `check()`.
 * With `identity: true` it also checks the device identity rule that keeps one volume's bytes off
 * another's disk: connect reports an identity; a second, failed connect of a connected volume and
 * its undo (a disconnect with no device, the first device in `inUse`) leave the first device
 * intact (issue 9, finding 1); a device whose path now names another device is never touched.
 * Call it at the top level of a test file; it registers a vitest `describe` block.
 */
export function describeTransportConformance(
  name: string,
  setup: () => Promise<TransportConformanceSetup>,
  options: TransportConformanceOptions = {},
): void {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const concurrent = options.concurrentConnects ?? 5;

  describe(`transport conformance: ${name}`, () => {
    let env: TransportConformanceSetup | undefined;
    let fs: HostFs;
    // Every connection a test made, disconnected after it even when the test failed.
    const made: ConnectionInfo[] = [];

    function current(): TransportConformanceSetup {
      if (!env) throw new Error('the conformance setup did not finish (see the beforeAll error)');
      return env;
    }

    function call(): { signal: AbortSignal } {
      return { signal: AbortSignal.timeout(timeoutMs) };
    }

    async function newConnection(): Promise<ConnectionInfo> {
      const connection = await current().makeConnection();
      made.push(connection);
      return connection;
    }

    async function isConnected(connection: ConnectionInfo, device?: Device): Promise<boolean> {
      const { driver, isConnected: custom } = current();
      if (custom) return custom(connection, device);
      if (driver.connected) {
        const entries = await driver.connected();
        return entries.some(
          (entry) =>
            sourceMatches(entry.source, connection.data, driver.sourceKeys ?? []) && (device === undefined || entry.device.path === device.path),
        );
      }
      return device === undefined ? false : fs.exists(device.path);
    }

    beforeAll(async () => {
      env = await setup();
      fs = env.fs ?? createHostServices().fs;
    }, timeoutMs);

    afterEach(async () => {
      const failures: string[] = [];
      for (const connection of made.splice(0)) {
        try {
          await current().driver.disconnect(connection, undefined, { force: true, ...call() });
        } catch (error) {
          failures.push(error instanceof Error ? error.message : String(error));
        }
      }
      if (failures.length > 0) throw new Error(`cleanup disconnects failed: ${failures.join('; ')}`);
    }, timeoutMs);

    afterAll(async () => {
      await env?.cleanup();
    }, timeoutMs);

    it('declares the protocols it connects', async () => {
      const { driver } = current();
      expect(driver.name).toMatch(/\S/);
      expect(driver.protocols.length).toBeGreaterThan(0);
      const connection = await newConnection();
      expect(driver.protocols).toContain(connection.driver_volume_type);
    });

    it('a transport that lists its devices declares the source keys that name a volume, and lists a connected one by them', async () => {
      const { driver } = current();
      if (!driver.connected) {
        // Nothing listed, nothing to match: reconcile names it under `unchecked`.
        expect(driver.sourceKeys === undefined || Array.isArray(driver.sourceKeys)).toBe(true);
        return;
      }
      const keys = driver.sourceKeys ?? [];
      expect(keys.length, 'sourceKeys: without them reconcile can never tell which volume a listed device is').toBeGreaterThan(0);
      for (const key of keys) expect(key).toMatch(/^\S+$/);
      const connection = await newConnection();
      // The volume is named by the keys its own connection_info carries (at least one of them).
      expect(keys.some((key) => connection.data[key] !== undefined && connection.data[key] !== null)).toBe(true);
      const device = await driver.connect(connection, call());
      const listed = (await driver.connected()).filter((entry) => entry.device.path === device.path);
      expect(listed.some((entry) => sourceMatches(entry.source, connection.data, keys))).toBe(true);
      // A dry run's listing (`readOnly`) sees the same device the same way.
      const looked = (await driver.connected({ readOnly: true })).filter((entry) => entry.device.path === device.path);
      expect(looked.map((entry) => entry.source)).toEqual(listed.map((entry) => entry.source));
    });

    it('a transport that repairs paths lists their states, and leaves a healthy device alone', async () => {
      const { driver } = current();
      if (!driver.repairPaths) return;
      expect(driver.connected, 'repairPaths acts on what connected() lists: implement both').toBeDefined();
      const connection = await newConnection();
      const device = await driver.connect(connection, call());
      const listed = (await driver.connected!()).find((entry) => entry.device.path === device.path);
      expect(listed).toBeDefined();
      const paths = listed!.device.paths ?? [];
      expect(paths.length, 'each path with its state, so reconcile and the agent see a failed one').toBeGreaterThan(0);
      for (const path of paths) expect(['active', 'standby', 'failed']).toContain(path.state);
      expect(paths.some((path) => path.state === 'active')).toBe(true);
      const repair = await driver.repairPaths(listed!, call());
      expect(repair.changed).toBe(false);
      expect(repair.detail).toMatch(/\S/);
      expect(repair.detail).not.toContain('\n');
    });

    it('upkeep (when supported) is quiet: with nothing connected, and twice beside a connected device, which stays connected and the same; an aborted signal ends it', async () => {
      const { driver } = current();
      if (!driver.upkeep) return;
      // What this suite's earlier tests connected is disconnected by now (afterEach): nothing of its own.
      await driver.upkeep(call().signal);
      const connection = await newConnection();
      const device = await driver.connect(connection, call());
      await driver.upkeep(call().signal);
      await driver.upkeep(call().signal);
      expect(await isConnected(connection, device)).toBe(true);
      expect(await driver.connect(connection, call())).toEqual(device);
      // An aborted round ends (resolves or rejects) instead of running on, and leaves the device.
      await driver.upkeep(AbortSignal.abort()).catch(() => undefined);
      expect(await isConnected(connection, device)).toBe(true);
    }, timeoutMs);

    it('check() says whether it works here, in one line', async () => {
      const result = await current().driver.check();
      expect(typeof result.ok).toBe('boolean');
      expect(result.summary).toMatch(/\S/);
      expect(result.summary).not.toContain('\n');
      if (!result.ok) expect(result.fix ?? '').toMatch(/\S/);
    });

    it('connectorProperties() returns an object', async () => {
      const properties = await current().driver.connectorProperties();
      expect(typeof properties).toBe('object');
      expect(properties).not.toBeNull();
    });

    it('connect returns an existing block device', async () => {
      const connection = await newConnection();
      const device = await current().driver.connect(connection, call());
      expect(zDevice.safeParse(device).success).toBe(true);
      const stat = await fs.stat(device.path);
      expect(stat?.isBlockDevice).toBe(true);
      expect(await isConnected(connection, device)).toBe(true);
    }, timeoutMs);

    it('connect twice returns the same device', async () => {
      const connection = await newConnection();
      const first = await current().driver.connect(connection, call());
      const second = await current().driver.connect(connection, call());
      expect(second.path).toBe(first.path);
    }, timeoutMs);

    it(`${concurrent} concurrent connects of one connection make one device`, async () => {
      const connection = await newConnection();
      const devices = await Promise.all(
        Array.from({ length: concurrent }, () => current().driver.connect(connection, call())),
      );
      expect(new Set(devices.map((d) => d.path)).size).toBe(1);
    }, timeoutMs);

    it('disconnect removes the device', async () => {
      const connection = await newConnection();
      const device = await current().driver.connect(connection, call());
      await current().driver.disconnect(connection, device, { force: false, ...call() });
      expect(await isConnected(connection, device)).toBe(false);
      expect(await isConnected(connection)).toBe(false);
    }, timeoutMs);

    it('disconnect twice succeeds', async () => {
      const connection = await newConnection();
      const device = await current().driver.connect(connection, call());
      await current().driver.disconnect(connection, device, { force: false, ...call() });
      await current().driver.disconnect(connection, device, { force: false, ...call() });
      expect(await isConnected(connection)).toBe(false);
    }, timeoutMs);

    it('disconnect without the device finds and removes it', async () => {
      const connection = await newConnection();
      const device = await current().driver.connect(connection, call());
      await current().driver.disconnect(connection, undefined, { force: false, ...call() });
      expect(await isConnected(connection, device)).toBe(false);
    }, timeoutMs);

    it('disconnect with force removes the device', async () => {
      const connection = await newConnection();
      const device = await current().driver.connect(connection, call());
      await current().driver.disconnect(connection, device, { force: true, ...call() });
      expect(await isConnected(connection, device)).toBe(false);
    }, timeoutMs);

    it('disconnect of a never-connected connection succeeds', async () => {
      const connection = await newConnection();
      await current().driver.disconnect(connection, undefined, { force: false, ...call() });
      await current().driver.disconnect(connection, undefined, { force: true, ...call() });
      expect(await isConnected(connection)).toBe(false);
    }, timeoutMs);

    it('connect with an aborted signal rejects and leaves nothing', async () => {
      const connection = await newConnection();
      const controller = new AbortController();
      controller.abort();
      const outcome = await current()
        .driver.connect(connection, { signal: controller.signal })
        .then(
          () => 'connected',
          (error: unknown) => error,
        );
      expect(outcome).toBeInstanceOf(Error);
      if (BerthError.is(outcome)) expect(['CANCELLED', 'TIMEOUT']).toContain(outcome.code);
      expect(await isConnected(connection)).toBe(false);
    }, timeoutMs);

    // Not registered at all without the option: a plugin's own run shows no skipped tests.
    if (options.identity === true) describe('the device identity rule', () => {
      it('connect returns the device with its identity, and connected() reports the same', async () => {
        const { driver } = current();
        const connection = await newConnection();
        const device = await driver.connect(connection, call());
        expect(zDeviceIdentity.safeParse(device.identity).success).toBe(true);
        expect((await driver.connect(connection, call())).identity).toEqual(device.identity);
        if (driver.connected) {
          const listed = (await driver.connected()).find((entry) => entry.device.path === device.path);
          expect(listed?.device.identity).toEqual(device.identity);
        }
      }, timeoutMs);

      it('the undo of a second, failed connect (no device, the first one in use) leaves the first device intact', async () => {
        const { driver, conflictingConnection } = current();
        const connection = await newConnection();
        const first = await driver.connect(connection, call());
        if (conflictingConnection) {
          const conflicting = conflictingConnection(connection);
          const refused = await driver.connect(conflicting, call()).then(
            () => undefined,
            (error: unknown) => error,
          );
          expect(refused).toBeInstanceOf(Error);
          await driver.disconnect(conflicting, undefined, { force: true, inUse: [first], ...call() });
        }
        // What core's undo of a cut-short connect does: find what it left, but never a device in use.
        await driver.disconnect(connection, undefined, { force: true, inUse: [first], ...call() });
        expect(await isConnected(connection, first)).toBe(true);
        expect((await driver.connect(connection, call())).identity).toEqual(first.identity);
      }, timeoutMs);

      it('a device in inUse is never disconnected, even when named', async () => {
        const { driver } = current();
        const connection = await newConnection();
        const device = await driver.connect(connection, call());
        await driver.disconnect(connection, device, { force: true, inUse: [device], ...call() }).catch(() => undefined);
        expect(await isConnected(connection, device)).toBe(true);
      }, timeoutMs);

      it('a device whose path now names another device (a reused name) is never touched', async () => {
        const { driver, reusePath } = current();
        if (!reusePath) return;
        const connection = await newConnection();
        const device = await driver.connect(connection, call());
        const other = await reusePath(device);
        try {
          const outcome = await driver.disconnect(connection, device, { force: true, ...call() }).then(
            () => undefined,
            (error: unknown) => error,
          );
          // Refused as a CONFLICT naming the mismatch, or quietly treated as gone: never detached.
          if (outcome !== undefined) {
            expect(BerthError.is(outcome) && outcome.code).toBe('CONFLICT');
            expect(BerthError.is(outcome) && outcome.details.reason).toBe('identity-mismatch');
          }
          expect(await other.present()).toBe(true);
        } finally {
          await other.cleanup();
        }
      }, timeoutMs);
    });

    it('a device whose storage went away is listed so, refused by a plain disconnect untouched, and let go of by a forced one', async () => {
      const { driver, loseStorage } = current();
      if (!loseStorage) return;
      const connection = await newConnection();
      const device = await driver.connect(connection, call());
      try {
        await loseStorage(connection, device);
        expect(driver.connected, 'storageGone is reported by connected(): implement it').toBeDefined();
        const listed = (await driver.connected!()).find((entry) => entry.device.path === device.path);
        expect(listed?.storageGone).toMatch(/^(deleted|replaced)$/);
        const refused = await driver.disconnect(connection, device, { force: false, ...call() }).then(
          () => undefined,
          (error: unknown) => error,
        );
        expect(BerthError.is(refused) && refused.code).toBe('CONFLICT');
        expect(BerthError.is(refused) && refused.details).toMatchObject({ reason: 'storage-gone', untouched: true });
        expect(BerthError.is(refused) && refused.hint).toMatch(/--force/);
        expect(await isConnected(connection, device)).toBe(true);
        await driver.disconnect(connection, device, { force: true, ...call() });
        expect(await isConnected(connection, device)).toBe(false);
      } finally {
        // The suite's own clean-up looks the device up by its connection: one whose storage went is named here.
        await driver.disconnect(connection, device, { force: true, ...call() }).catch(() => undefined);
      }
    }, timeoutMs);

    it('connect after a disconnect works again', async () => {
      const connection = await newConnection();
      const first = await current().driver.connect(connection, call());
      await current().driver.disconnect(connection, first, { force: false, ...call() });
      const second = await current().driver.connect(connection, call());
      expect((await fs.stat(second.path))?.isBlockDevice).toBe(true);
      expect(await isConnected(connection, second)).toBe(true);
    }, timeoutMs);
  });
}
