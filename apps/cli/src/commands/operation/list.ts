import { Flags } from '@oclif/core';
import { zOperationKind, zOperationState } from '@berth/core';
import type { Operation } from '@berth/core';
import { BaseCommand, outputFlag } from '../../base-command.js';
import { renderTable } from '../../table.js';
import { operationColumns } from '../../views.js';

/** `berth operation list`: journalled operations, newest first as the service returns them. */
export default class OperationList extends BaseCommand<typeof OperationList> {
  static override summary = 'List operations';
  static override aliases = ['operation:ls'];
  static override description = 'List attach, detach and other operations with their state; `failed` ones left work for `berth reconcile`.';
  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --state running',
    '<%= config.bin %> <%= command.id %> --kind reconcile',
    '<%= config.bin %> <%= command.id %> --state failed --json',
  ];

  static override flags = {
    state: Flags.option({ description: 'Only operations in this state', options: zOperationState.options })(),
    kind: Flags.option({ description: 'Only operations of this kind', options: zOperationKind.options })(),
    output: outputFlag,
  };

  async run(): Promise<Operation[]> {
    const berth = await this.berth();
    const listed = await berth.listOperations(this.flags.state === undefined ? {} : { state: this.flags.state });
    const operations = this.flags.kind === undefined ? listed : listed.filter((o) => o.kind === this.flags.kind);
    if (operations.length === 0) {
      this.log('No operations.');
    } else {
      const volumes = new Map((await berth.listVolumes()).map((v) => [v.id, v]));
      this.log(renderTable(operationColumns(volumes), operations, { wide: this.flags.output === 'wide' }));
    }
    return operations;
  }
}
