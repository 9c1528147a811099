import { Args } from '@oclif/core';
import type { Attachment, DevicePath, Operation } from '@berth/core';
import { BaseCommand } from '../../base-command.js';
import { journalRows, nameIndex, operationDuration } from '../../format.js';
import { renderFields, renderTable, type Column } from '../../table.js';
import { resourceId } from '../../validate.js';
import { attachmentFields, journalColumns } from '../../views.js';

/** `berth attachment show`: one attachment, its timings and its operations' journals. */
export default class AttachmentShow extends BaseCommand<typeof AttachmentShow> {
  static override summary = 'Show an attachment';
  static override description = 'Show an attachment: status, device, host, per-step timings and the journal of every operation on it.';
  static override examples = ['<%= config.bin %> <%= command.id %> 6d1f3a0e-2b7c-4a55-8f0e-9c4b1d2e3f40', '<%= config.bin %> <%= command.id %> 6d1f3a0e-2b7c-4a55-8f0e-9c4b1d2e3f40 --json'];

  static override args = {
    id: Args.string({ description: 'Attachment id (see `berth attachment list`)', required: true }),
  };

  async run(): Promise<Attachment & { operations: Operation[] }> {
    const id = resourceId(this.args.id, 'attachment');
    const berth = await this.berth();
    const attachment = await berth.getAttachment(id);
    const [volumes, servers, hosts, volumeOperations] = await Promise.all([
      berth.listVolumes(),
      berth.listServers(),
      berth.listHosts(),
      // The volume's operations only: the whole journal may hold months of them (and through the
      // API a listing answers the newest 10 000, which may not reach an old attachment's attach).
      berth.listOperations({ volumeId: attachment.volumeId }),
    ]);
    const operations = volumeOperations.filter((operation) => operation.attachmentId === attachment.id);
    this.log(renderFields(attachmentFields(attachment, nameIndex(volumes, servers, hosts))));
    const paths = attachment.device?.paths ?? [];
    if (paths.length > 0) {
      // Each path of a multipath device as the transport saw it when it connected: a recorded
      // state, not a live one (an explorer read "active" for paths that had failed since).
      this.log('');
      this.log('Paths (as recorded when connected, not checked now):');
      this.log(renderTable(pathColumns, paths));
    }
    for (const operation of operations) {
      this.log('');
      this.log(`Operation ${operation.id}: ${operation.kind}, ${operation.state}, ${operationDuration(operation)}`);
      this.log(renderTable(journalColumns, journalRows(operation)));
    }
    return { ...attachment, operations };
  }
}

const pathColumns: Array<Column<DevicePath>> = [
  { header: 'portal', get: (p) => p.portal ?? '-' },
  { header: 'device', get: (p) => p.device ?? '-' },
  { header: 'state', get: (p) => p.state },
];
