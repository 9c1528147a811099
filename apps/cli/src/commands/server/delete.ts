import { Args } from '@oclif/core';
import { BaseCommand } from '../../base-command.js';
import { resourceRef } from '../../validate.js';

/** `berth server delete`: remove a server with nothing attached. */
export default class ServerDelete extends BaseCommand<typeof ServerDelete> {
  static override summary = 'Delete a server';
  static override description = 'Delete a server that has no attachments (detach its volumes first).';
  static override examples = ['<%= config.bin %> <%= command.id %> web-1'];

  static override args = {
    server: Args.string({ description: 'Server name or id', required: true }),
  };

  async run(): Promise<{ deleted: true; id: string; name: string }> {
    const ref = resourceRef(this.args.server, 'server');
    const berth = await this.berth();
    const server = await berth.getServer(ref);
    await berth.deleteServer(server.id);
    this.log(`Deleted server ${server.name} (${server.id})`);
    return { deleted: true, id: server.id, name: server.name };
  }
}
