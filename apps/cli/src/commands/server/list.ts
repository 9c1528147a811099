import type { Server } from '@berth/core';
import { BaseCommand } from '../../base-command.js';
import { renderTable } from '../../table.js';
import { serverColumns } from '../../views.js';

/** `berth server list`: every server and its host. */
export default class ServerList extends BaseCommand<typeof ServerList> {
  static override summary = 'List servers';
  static override aliases = ['server:ls'];
  static override description = 'List servers and the hosts they run on.';
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json'];

  async run(): Promise<Server[]> {
    const berth = await this.berth();
    const [servers, hosts] = await Promise.all([berth.listServers(), berth.listHosts()]);
    this.log(
      servers.length === 0
        ? 'No servers. `berth attach VOLUME` creates this host\'s own server on first use.'
        : renderTable(serverColumns(new Map(hosts.map((h) => [h.id, h]))), servers),
    );
    return servers;
  }
}
