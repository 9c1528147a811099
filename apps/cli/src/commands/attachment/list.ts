import { Flags } from '@oclif/core';
import type { Attachment } from '@berth/core';
import { BaseCommand, outputFlag } from '../../base-command.js';
import { nameIndex } from '../../format.js';
import { renderTable } from '../../table.js';
import { resourceRef } from '../../validate.js';
import { attachmentColumns } from '../../views.js';

/** `berth attachment list`: attachments with status, device, host and per-step timings. */
export default class AttachmentList extends BaseCommand<typeof AttachmentList> {
  static override summary = 'List attachments';
  static override aliases = ['attachment:ls'];
  static override description = 'List attachments with their status, device, host and how long each attach step took.';
  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --volume data1',
    '<%= config.bin %> <%= command.id %> --server web-1 --json',
    '<%= config.bin %> <%= command.id %> -o wide   # also host, mode, transport and timings',
  ];

  static override flags = {
    volume: Flags.string({ description: 'Only attachments of this volume (name or id)' }),
    server: Flags.string({ description: 'Only attachments to this server (name or id)' }),
    output: outputFlag,
  };

  async run(): Promise<Attachment[]> {
    const volume = this.flags.volume === undefined ? undefined : resourceRef(this.flags.volume, 'volume');
    const server = this.flags.server === undefined ? undefined : resourceRef(this.flags.server, 'server');
    const berth = await this.berth();
    const attachments = await berth.listAttachments({
      ...(volume === undefined ? {} : { volume }),
      ...(server === undefined ? {} : { server }),
    });
    if (attachments.length === 0) {
      this.log('No attachments. Attach a volume to this host with `berth attach VOLUME`.');
    } else {
      const [volumes, servers, hosts] = await Promise.all([berth.listVolumes(), berth.listServers(), berth.listHosts()]);
      this.log(renderTable(attachmentColumns(nameIndex(volumes, servers, hosts)), attachments, { wide: this.flags.output === 'wide' }));
    }
    return attachments;
  }
}
