import { randomUUID } from 'node:crypto';
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
    async cleanup() {
      try {
        for (const volume of volumes) await backend.delete(volume, AbortSignal.timeout(10_000));
      } finally {
        await env.dispose();
      }
    },
  };
});
