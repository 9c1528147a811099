import type { Connector } from '@berth/core';
import { BaseCommand } from '../base-command.js';
import { renderFields } from '../table.js';

/** `berth connector`: this host's connector properties. */
export default class ConnectorCommand extends BaseCommand<typeof ConnectorCommand> {
  static override summary = "Show this host's connector";
  static override description =
    "Show this host's connector properties (host, initiator, ip, multipath, ...), merged from every transport: what a backend receives in initialize_connection.";
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json'];

  async run(): Promise<Connector> {
    const berth = await this.berth();
    const connector = await berth.connector();
    this.log(renderFields(Object.entries(connector).map(([key, value]) => [key, typeof value === 'string' ? value : JSON.stringify(value)] as const)));
    return connector;
  }
}
