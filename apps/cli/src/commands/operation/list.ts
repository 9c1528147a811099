import { Flags, ux } from '@oclif/core';
import { MAX_OPERATION_LIST, zOperationKind, zOperationState } from '@berth/core';
import type { Operation } from '@berth/core';
import { BaseCommand, outputFlag } from '../../base-command.js';
import { renderTable } from '../../table.js';
import { operationColumns } from '../../views.js';

/** How many `berth operation list` shows without `--limit`/`--all`. */
const DEFAULT_LIMIT = 50;

/** `berth operation list`: journalled operations, newest first as the service returns them. */
export default class OperationList extends BaseCommand<typeof OperationList> {
  static override summary = 'List operations';
  static override aliases = ['operation:ls'];
  static override description = 'List attach, detach and other operations with their state; `failed` ones left work for `berth reconcile`.';
  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --state running',
    '<%= config.bin %> <%= command.id %> --kind reconcile',
    '<%= config.bin %> <%= command.id %> --volume db1',
    '<%= config.bin %> <%= command.id %> --state failed --json',
    '<%= config.bin %> <%= command.id %> --limit 500',
  ];

  static override flags = {
    state: Flags.option({ description: 'Only operations in this state', options: zOperationState.options })(),
    kind: Flags.option({ description: 'Only operations of this kind', options: zOperationKind.options })(),
    volume: Flags.string({ description: 'Only operations on this volume (name or id)' }),
    limit: Flags.integer({ description: `The newest this many (at most ${MAX_OPERATION_LIST})`, default: DEFAULT_LIMIT, min: 1, max: MAX_OPERATION_LIST, exclusive: ['all'] }),
    all: Flags.boolean({ description: `All of them, up to ${MAX_OPERATION_LIST} (a journal of months holds tens of thousands: slow, and large with --json)`, exclusive: ['limit'] }),
    output: outputFlag,
  };

  async run(): Promise<Operation[]> {
    const berth = await this.berth();
    const limit = this.flags.all ? MAX_OPERATION_LIST : this.flags.limit;
    // A volume that does not exist is NOT_FOUND, not an empty list.
    const volumeId = this.flags.volume === undefined ? undefined : (await berth.getVolume(this.flags.volume)).id;
    // One more than shown: whether older ones were left out, without reading them all.
    const listed = await berth.listOperations({
      ...(this.flags.state === undefined ? {} : { state: this.flags.state }),
      ...(this.flags.kind === undefined ? {} : { kind: this.flags.kind }),
      ...(volumeId === undefined ? {} : { volumeId }),
      limit: limit + 1,
    });
    const operations = listed.slice(0, limit);
    if (operations.length === 0) {
      this.log('No operations.');
    } else {
      const volumes = new Map((await berth.listVolumes()).map((v) => [v.id, v]));
      this.log(renderTable(operationColumns(volumes), operations, { wide: this.flags.output === 'wide' }));
    }
    if (listed.length > limit && !this.jsonEnabled()) {
      ux.stderr(`(the newest ${limit} shown; older ones left out: --limit N, or --all for up to ${MAX_OPERATION_LIST})`);
    }
    return operations;
  }
}
