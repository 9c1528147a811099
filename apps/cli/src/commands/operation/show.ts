import { Args } from '@oclif/core';
import type { Operation, OperationStep } from '@berth/core';
import { BaseCommand } from '../../base-command.js';
import { journalRows } from '../../format.js';
import { renderFields, renderTable, type Column } from '../../table.js';
import { resourceId } from '../../validate.js';
import { journalColumns, operationFields } from '../../views.js';

const text = (value: unknown): string => (typeof value === 'string' ? value : '-');

/** A `reconcile` operation's journal: one step per fix, with what it fixed and how that went. */
const reconcileJournalColumns: ReadonlyArray<Column<OperationStep>> = [
  { header: '#', get: (s) => String(s.seq) },
  { header: 'fix', get: (s) => s.name },
  { header: 'resource', get: (s) => text(s.data?.resource) },
  { header: 'state', get: (s) => s.state },
  { header: 'result', get: (s) => (s.error ? `${s.error.code}: ${s.error.message}` : text(s.data?.result ?? s.data?.skipped)) },
];

/** `berth operation show`: one operation and its step journal. */
export default class OperationShow extends BaseCommand<typeof OperationShow> {
  static override summary = 'Show an operation';
  static override description = 'Show an operation and its journal: every step and undo, its state, how long it took and its error.';
  static override examples = ['<%= config.bin %> <%= command.id %> 2c9d8e7f-1a2b-4c3d-9e8f-7a6b5c4d3e21'];

  static override args = {
    id: Args.string({ description: 'Operation id (see `berth operation list`)', required: true }),
  };

  async run(): Promise<Operation> {
    const id = resourceId(this.args.id, 'operation');
    const berth = await this.berth();
    const operation = await berth.getOperation(id);
    this.log(renderFields(operationFields(operation)));
    if (operation.steps.length > 0) {
      this.log('');
      this.log(renderTable(operation.kind === 'reconcile' ? reconcileJournalColumns : journalColumns, journalRows(operation)));
    }
    return operation;
  }
}
