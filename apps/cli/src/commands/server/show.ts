import { Args } from '@oclif/core';
import type { Attachment, Server } from '@berth/core';
import { BaseCommand } from '../../base-command.js';
import { nameIndex } from '../../format.js';
import { renderFields, renderTable } from '../../table.js';
import { resourceRef } from '../../validate.js';
import { attachmentColumns, serverFields } from '../../views.js';

/** `berth server show`: one server and what is attached to it. */
export default class ServerShow extends BaseCommand<typeof ServerShow> {
  static override summary = 'Show a server';
  static override description = 'Show a server (by name or id) and the volumes attached to it.';
  static override examples = ['<%= config.bin %> <%= command.id %> web-1', '<%= config.bin %> <%= command.id %> web-1 --json'];

  static override args = {
    server: Args.string({ description: 'Server name or id', required: true }),
  };

  async run(): Promise<Server & { attachments: Attachment[] }> {
    const ref = resourceRef(this.args.server, 'server');
    const berth = await this.berth();
    const server = await berth.getServer(ref);
    const [attachments, hosts] = await Promise.all([berth.listAttachments({ server: server.id }), berth.listHosts()]);
    this.log(renderFields(serverFields(server, new Map(hosts.map((h) => [h.id, h])))));
    if (attachments.length > 0) {
      const volumes = await berth.listVolumes();
      this.log('');
      this.log(renderTable(attachmentColumns(nameIndex(volumes, [server], hosts)), attachments));
    }
    return { ...server, attachments };
  }
}
