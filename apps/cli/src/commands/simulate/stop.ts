import { BaseCommand } from '../../base-command.js';

/** Stop the simulated host that `--simulate` started (its sessions logged out, its disks closed). */
export default class SimulateStop extends BaseCommand<typeof SimulateStop> {
  static override description =
    "Stop the simulated host `--simulate` runs in the background: every simulated session is logged out and its disks (loop devices over qemu-storage-daemon FUSE exports) are closed. Detach volumes first.";

  static override examples = ['<%= config.bin %> simulate stop', '<%= config.bin %> simulate stop --json'];

  async run(): Promise<{ stopped: boolean; root: string }> {
    // The config's `simulate` section says where the simulated host lives.
    const { loadConfigs, stopSimulatedHost } = await import('@berth/runtime');
    const { config, simulate } = await loadConfigs(this.openBerthOptions());
    const { root } = simulate;
    await stopSimulatedHost(config.dataDir, simulate);
    if (!this.jsonEnabled()) this.log(`Stopped the simulated host at ${root}`);
    return { stopped: true, root };
  }
}
