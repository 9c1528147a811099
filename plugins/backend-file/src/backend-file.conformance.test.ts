import { stat } from 'node:fs/promises';
import { describeBackendConformance } from '@berth/testkit';
import { createFileBackendTestEnv } from './test-backend-env.js';

describeBackendConformance('file', async () => {
  const env = await createFileBackendTestEnv();
  return {
    backend: env.backend,
    cleanup: env.dispose,
    async exists(volume) {
      return stat(`${env.dataDir}/volumes/${volume.id}.img`).then(
        () => true,
        () => false,
      );
    },
    async sizeOf(volume) {
      return (await stat(`${env.dataDir}/volumes/${volume.id}.img`)).size;
    },
  };
});
