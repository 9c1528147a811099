import { randomUUID } from 'node:crypto';
import { unlink } from 'node:fs/promises';
import { hostFacts } from '@berth/host';
import { silentLogger, type BackendVolume } from '@berth/core';
import { createFileBackend } from '@berth/backend-file';
import { describeTransportConformance } from '@berth/testkit';
import { createLoopTestEnv } from './test-loop-env.js';

// The loop transport against files made by the file backend, on real loop devices.
describeTransportConformance('loop (files from the file backend)', async () => {
  const env = await createLoopTestEnv();
  const backend = createFileBackend({ host: env.host, dataDir: env.dir, options: {}, logger: silentLogger });
  const volumes: BackendVolume[] = [];
  return {
    driver: env.driver,
    async makeConnection() {
      const volume: BackendVolume = { id: randomUUID(), name: 'conformance', sizeBytes: 16 * 1024 * 1024, providerLocation: null };
      const signal = AbortSignal.timeout(10_000);
      volume.providerLocation = (await backend.create(volume, signal)).providerLocation;
      volumes.push(volume);
      return backend.initializeConnection(volume, { host: hostFacts().hostname }, signal);
    },
    // The same file read-only while it is attached read-write: refused.
    conflictingConnection: (connection) => ({ ...connection, data: { ...connection.data, access_mode: 'ro' } }),
    async reusePath(device) {
      // What the kernel does with a freed number: the next file attached gets it.
      const other = await env.makeFile(`other-${randomUUID()}.img`);
      await env.host.runner.run('losetup', ['--detach', device.path], { timeoutMs: 10_000 });
      await env.host.runner.run('losetup', [device.path, other.data.device_path], { timeoutMs: 10_000 });
      return {
        present: async () => (await env.devicesBacking(other.data.device_path)).some((d) => d.name === device.path),
        cleanup: async () => {
          await env.host.runner.run('losetup', ['--detach', device.path], { timeoutMs: 10_000, reject: false });
        },
      };
    },
    async loseStorage(connection) {
      // `rm` of the volume file: the loop device keeps the unlinked inode.
      await unlink(String(connection.data.device_path));
    },
    async cleanup() {
      try {
        for (const volume of volumes) await backend.delete(volume, AbortSignal.timeout(10_000));
      } finally {
        await env.dispose();
      }
    },
  };
}, { identity: true });
