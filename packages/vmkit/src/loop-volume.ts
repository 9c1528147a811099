import { randomUUID } from 'node:crypto';
import { mkdtemp, open, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { HostServices } from '@berth/host';
import { isIdentityMismatch, silentLogger, zHypervisor, type Attachment, type ConnectionInfo, type Device, type Hypervisor, type HypervisorInput, type Server } from '@berth/core';
import { createLoopDriver } from '@berth/driver-loop';

/** A volume file connected as a real loop device by the `loop` transport, for consumer tests. */
export interface LoopVolume {
  readonly volumeId: string;
  readonly file: string;
  readonly device: Device;
  readonly connection: ConnectionInfo;
  /**
   * An attachment record of this volume to `server`, as the pipeline has it at `publish`: the same
   * id for the same server and mode each time (what a publish made, the unpublish then finds).
   */
  attachment(server: Server, mode?: 'rw' | 'ro'): Attachment;
  /** The ids `attachment` handed out (their `/dev/berth/<id>` links are the cleanup's too). */
  readonly attachmentIds: readonly string[];
  /** Whether the loop device still backs the file (the host side is intact). */
  connected(): Promise<boolean>;
  /** Disconnect the loop device (flushes it). Idempotent. */
  disconnect(): Promise<void>;
  /** Bytes of the file at `offset`, read on the host. */
  read(offset: number, length: number): Promise<string>;
}

/** Make a sparse file of `sizeBytes` under `dir` and connect it with the real loop transport. */
export async function makeLoopVolume(host: HostServices, dir: string, sizeBytes = 64 * 2 ** 20): Promise<LoopVolume> {
  const volumeId = randomUUID();
  const file = path.join(dir, `${volumeId}.img`);
  await (await open(file, 'wx', 0o600)).close();
  await truncate(file, sizeBytes);
  const driver = createLoopDriver({ host, dataDir: dir, options: {}, logger: silentLogger });
  const connection: ConnectionInfo = { driver_volume_type: 'file', data: { device_path: file, volume_id: volumeId } };
  const device = await driver.connect(connection, { signal: AbortSignal.timeout(60_000), volumeId });
  const ids = new Map<string, string>();
  return {
    volumeId,
    file,
    device,
    connection,
    get attachmentIds() {
      return [...ids.values()];
    },
    attachment(server, mode = 'rw') {
      const now = new Date().toISOString();
      const key = `${server.id}:${mode}`;
      // A new id each call made the unpublish of a test look for another link than its publish made.
      const id = ids.get(key) ?? ids.set(key, randomUUID()).get(key)!;
      return {
        id,
        volumeId,
        serverId: server.id,
        hostId: server.hostId,
        status: 'attaching',
        mode,
        transport: 'loop',
        connector: { host: 'vmkit' },
        connectionInfo: connection,
        device,
        publishedPath: null,
        timings: {},
        error: null,
        createdAt: now,
        updatedAt: now,
      };
    },
    async connected() {
      const listed = await driver.connected?.();
      return (listed ?? []).some((entry) => entry.device.path === device.path);
    },
    async disconnect() {
      await driver.disconnect(connection, device, { force: false, signal: AbortSignal.timeout(60_000), volumeId });
    },
    async read(offset, length) {
      const handle = await open(file, 'r');
      try {
        const buffer = Buffer.alloc(length);
        await handle.read(buffer, 0, length, offset);
        return buffer.toString('utf8');
      } finally {
        await handle.close();
      }
    },
  };
}

/**
 * The loop volumes of one suite, in one `mkdtemp` directory: `cleanup()` removes their stable
 * links (if a test left them), disconnects every loop device and removes the directory. Call it
 * after the guest is stopped: a running guest still holds a plugged device open.
 */
export class LoopVolumes {
  private readonly made: LoopVolume[] = [];

  private constructor(
    private readonly host: HostServices,
    /** The directory the volume files (and a consumer's data dir) live in. */
    readonly dir: string,
  ) {}

  /** A new empty set in a new temp directory named `<prefix>XXXXXX`. */
  static async create(host: HostServices, prefix: string): Promise<LoopVolumes> {
    return new LoopVolumes(host, await mkdtemp(path.join(tmpdir(), prefix)));
  }

  /** Make and connect one more volume. */
  async make(sizeBytes?: number): Promise<LoopVolume> {
    const volume = await makeLoopVolume(this.host, this.dir, sizeBytes);
    this.made.push(volume);
    return volume;
  }

  /** One more volume with an attachment of it to `server` (what a consumer conformance run makes). */
  async makeAttached(server: Server): Promise<{ volumeId: string; device: Device; attachment: Attachment }> {
    const volume = await this.make();
    return { volumeId: volume.volumeId, device: volume.device, attachment: volume.attachment(server) };
  }

  /** Remove links, loop devices and the directory, whatever state the tests left. */
  async cleanup(): Promise<void> {
    try {
      for (const volume of this.made) {
        for (const name of [volume.volumeId, ...volume.attachmentIds]) await this.host.fs.unlink(`/dev/berth/${name}`);
      }
      // Newest first, and a device whose node now names another one (a test disconnected it and the
      // kernel gave its number to a later volume, or to someone else's file) is not ours to remove.
      for (const volume of [...this.made].reverse()) await volume.disconnect().catch((error: unknown) => {
        if (!isIdentityMismatch(error)) throw error;
      });
    } finally {
      await rm(this.dir, { recursive: true, force: true });
    }
  }
}

/** A server record whose `hypervisor` names a guest (the field the guest consumers read), checked with core's schema. */
export function guestServer(name: string, hypervisor: HypervisorInput): Server & { hypervisor: Hypervisor } {
  const now = new Date().toISOString();
  return { id: randomUUID(), name, projectId: 'vmkit', hostId: randomUUID(), createdAt: now, updatedAt: now, hypervisor: zHypervisor.parse(hypervisor) };
}
