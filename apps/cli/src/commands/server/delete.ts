import { Args } from '@oclif/core';
import { BaseCommand, yesFlag } from '../../base-command.js';
import { resourceRef } from '../../validate.js';

/** `berth server delete`: remove a server with nothing attached. */
export default class ServerDelete extends BaseCommand<typeof ServerDelete> {
  static override summary = 'Delete a server';
  static override aliases = ['server:rm'];
  static override description =
    'Delete a server that has no attachments (detach its volumes first). Asks first on a terminal; without one (scripts, CI) it needs --yes.';
  static override examples = ['<%= config.bin %> <%= command.id %> web-1', '<%= config.bin %> <%= command.id %> web-1 --yes'];

  static override args = {
    server: Args.string({ description: 'Server name or id', required: true }),
  };

  static override flags = { yes: yesFlag };

  async run(): Promise<{ deleted: true; id: string; name: string }> {
    const ref = resourceRef(this.args.server, 'server');
    const berth = await this.berth();
    const server = await berth.getServer(ref);
    await this.confirm(`Delete server ${server.name} (${server.id})?`, `berth server delete ${server.name}`);
    await berth.deleteServer(server.id);
    this.log(`Deleted server ${server.name} (${server.id})`);
    return { deleted: true, id: server.id, name: server.name };
  }
}
