import { existsSync } from 'node:fs';
import { Flags } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';

/** Stop the simulated host that `--simulate` started (its sessions logged out, its disks closed). */
export default class SimulateStop extends BaseCommand<typeof SimulateStop> {
  static override description =
    "Stop the simulated host `--simulate` runs in the background: every simulated session is logged out and its disks (loop devices over qemu-storage-daemon FUSE exports) are closed. Refused (CONFLICT, listing them) while attachments go through it: detach them first, or give --force.";

  static override examples = ['<%= config.bin %> simulate stop', '<%= config.bin %> simulate stop --json', '<%= config.bin %> simulate stop --force'];

  static override flags = {
    force: Flags.boolean({ description: 'Stop it even while attachments go through it (their devices and links go; their records stay)', default: false }),
  };

  async run(): Promise<{ stopped: boolean; root: string }> {
    // The config's `simulate` section says where the simulated host lives.
    const { loadConfigs, stopSimulatedHost, attachmentsOnSimulatedHost, simulatedHostInUseError } = await import('@berth/runtime');
    const { config, simulate } = await loadConfigs(this.openBerthOptions());
    const { root } = simulate;
    // A data dir berth never made holds no attachment: nothing is opened or created then.
    if (!this.flags.force && existsSync(config.dataDir)) {
      const berth = await this.berth();
      const [attachments, volumes] = await Promise.all([berth.listAttachments(), berth.listVolumes()]);
      const uses = attachmentsOnSimulatedHost(attachments, volumes, root);
      if (uses.length > 0) throw simulatedHostInUseError(uses, root);
    }
    await stopSimulatedHost(config.dataDir, simulate);
    if (!this.jsonEnabled()) this.log(`Stopped the simulated host at ${root}`);
    return { stopped: true, root };
  }
}
