import type { Host } from '@berth/core';
import { BaseCommand, outputFlag } from '../../base-command.js';
import { renderTable } from '../../table.js';
import { hostColumns } from '../../views.js';

/** An agent not heard from for this long is offline (core's default `agent.offlineAfterMs`). */
const DEFAULT_OFFLINE_AFTER_MS = 45_000;

/** `berth host list`: every host, whether its `berth agent` is online, when it was last seen, its initiator. */
export default class HostList extends BaseCommand<typeof HostList> {
  static override summary = 'List hosts and their agents';
  static override aliases = ['host:ls'];
  static override description =
    "List the hosts berth knows: whether each one's `berth agent` is online (heard from within the config's agent.offlineAfterMs) or offline, when it was last seen, its berth version and its iSCSI initiator. The host berth runs on in-process has no agent (`-`).";
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json', '<%= config.bin %> <%= command.id %> -o wide'];

  static override flags = {
    output: outputFlag,
  };

  async run(): Promise<Host[]> {
    const berth = await this.berth();
    const hosts = await berth.listHosts();
    this.log(
      hosts.length === 0
        ? 'No hosts. A host appears when its `berth agent` registers, or on this host\'s first attach.'
        : renderTable(hostColumns(await this.offlineAfterMs()), hosts, { wide: this.flags.output === 'wide' }),
    );
    return hosts;
  }

  /** The local config's threshold; through the API the answer carries the state, so the default only fills in. */
  private async offlineAfterMs(): Promise<number> {
    if (this.flags.api !== undefined && this.flags.api !== '') return DEFAULT_OFFLINE_AFTER_MS;
    const { loadConfig } = await import('@berth/runtime');
    return (await loadConfig(this.openBerthOptions())).agent.offlineAfterMs;
  }
}
