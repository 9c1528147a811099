// The conformance suite berth's own transports pass, on real loop devices (run it as root).
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger, type ConnectionInfo } from '@berth/core';
import { createHostServices } from '@berth/host';
import { describeTransportConformance } from '@berth/testkit/conformance';
import { createTransport, zOptions } from './index.js';

describeTransportConformance('loop-4k', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-conformance-'));
  // The context berth gives a factory: the host's services, a data dir, parsed options, a logger.
  const driver = createTransport({
    host: createHostServices(),
    dataDir: dir,
    options: zOptions.parse({ directory: dir }),
    logger: silentLogger,
  });
  return {
    driver,
    async makeConnection(): Promise<ConnectionInfo> {
      const file = join(dir, `${randomUUID()}.img`);
      await writeFile(file, '');
      await truncate(file, 16 * 1024 * 1024);
      return { driver_volume_type: 'file', data: { device_path: file } };
    },
    async cleanup() {
      await rm(dir, { recursive: true, force: true });
    },
  };
});
