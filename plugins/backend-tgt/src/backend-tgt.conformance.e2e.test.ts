import { stat } from 'node:fs/promises';
import { describeBackendConformance } from '@berth/testkit';
import { parseTargetList } from './tgtadm-show-parser.js';
import { createTgtTestEnv } from './test-tgt-env.js';

describeBackendConformance('tgt', async () => {
  const env = await createTgtTestEnv();
  const fileOf = (id: string) => `${env.dataDir}/backend-tgt/luns/${id}.img`;
  return {
    backend: env.backend,
    cleanup: env.dispose,
    connector: { host: 'conformance-host', initiator: 'iqn.2026-11.io.berth.test:conformance' },
    sizeBytes: 16 * 1024 * 1024,
    async exists(volume) {
      const file = await stat(fileOf(volume.id)).then(
        () => true,
        () => false,
      );
      const listing = await env.runner.run('tgtadm', ['-C', String(env.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target']);
      const target = parseTargetList(listing.stdout).some((t) => t.iqn.endsWith(`:volume-${volume.id}`));
      if (file !== target) throw new Error(`volume ${volume.id}: file ${file ? 'exists' : 'missing'} but target ${target ? 'exists' : 'missing'}`);
      return file;
    },
    async sizeOf(volume) {
      return (await stat(fileOf(volume.id))).size;
    },
  };
});
