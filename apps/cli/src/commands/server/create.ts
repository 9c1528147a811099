import { Args, Flags } from '@oclif/core';
import type { Server } from '@berth/core';
import { BaseCommand } from '../../base-command.js';
import { renderFields } from '../../table.js';
import { hostName, resourceName } from '../../validate.js';
import { serverFields } from '../../views.js';

/** `berth server create`: a consumer of volumes, placed on a host. */
export default class ServerCreate extends BaseCommand<typeof ServerCreate> {
  static override summary = 'Create a server';
  static override description = 'Create a server (the consumer volumes attach to), placed on a host (default: this host).';
  static override examples = ['<%= config.bin %> <%= command.id %> web-1', '<%= config.bin %> <%= command.id %> db-1 --host node-2 --json'];

  static override args = {
    name: Args.string({ description: 'Server name: letters, digits, ".", "_" and "-"', required: true }),
  };

  static override flags = {
    host: Flags.string({ description: 'Host the server runs on (default: this host)' }),
  };

  async run(): Promise<Server> {
    const name = resourceName(this.args.name, 'server');
    const host = this.flags.host === undefined ? undefined : hostName(this.flags.host);
    const berth = await this.berth();
    const server = await berth.createServer({ name, ...(host === undefined ? {} : { host }) });
    const hosts = new Map((await berth.listHosts()).map((h) => [h.id, h]));
    this.log(`Created server ${server.name} (${server.id})`);
    this.log(renderFields(serverFields(server, hosts), '  '));
    return server;
  }
}
