import { Flags } from '@oclif/core';
import { VOLUME_STATUSES } from '@berth/core';
import type { Volume } from '@berth/core';
import { BaseCommand } from '../../base-command.js';
import { renderTable } from '../../table.js';
import { volumeColumns } from '../../views.js';

/** `berth volume list`: every volume with its size and status. */
export default class VolumeList extends BaseCommand<typeof VolumeList> {
  static override summary = 'List volumes';
  static override aliases = ['volume:ls'];
  static override description = 'List volumes with their size, status and backend.';
  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --status in-use',
    '<%= config.bin %> <%= command.id %> --json',
  ];

  static override flags = {
    status: Flags.option({ description: 'Only volumes with this status', options: VOLUME_STATUSES })(),
  };

  async run(): Promise<Volume[]> {
    const berth = await this.berth();
    const volumes = await berth.listVolumes(this.flags.status === undefined ? {} : { status: this.flags.status });
    this.log(volumes.length === 0 ? 'No volumes. Create one with `berth volume create data1 --size 1GiB`.' : renderTable(volumeColumns, volumes));
    return volumes;
  }
}
