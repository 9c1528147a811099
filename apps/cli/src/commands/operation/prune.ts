import { Flags } from '@oclif/core';
import type { OperationPruneReport } from '@berth/core';
import { BaseCommand, yesFlag } from '../../base-command.js';
import { pruneAge } from '../../validate.js';

/** `berth operation prune`: delete finished operations older than an age, with their journal. */
export default class OperationPrune extends BaseCommand<typeof OperationPrune> {
  static override summary = 'Delete finished operations older than an age';
  static override description =
    'The journal keeps every operation with its steps (about 2.6 KB each) until it is pruned. This deletes the operations that ended more than --older-than ago ' +
    '(at least 1h), with their steps and work items; never a running one, nor one whose work item a host\'s agent may still run or undo, nor one whose attachment still exists. Volumes and attachments are not touched. ' +
    'A retry with a deleted operation\'s idempotency key starts a new operation. Asks first on a terminal; without one it needs --yes. With --dry-run it only counts.';
  static override examples = [
    '<%= config.bin %> <%= command.id %> --older-than 30d --dry-run',
    '<%= config.bin %> <%= command.id %> --older-than 30d --yes',
    '<%= config.bin %> <%= command.id %> --older-than 2w --yes --json',
  ];

  static override flags = {
    'older-than': Flags.string({ description: 'Delete operations that ended longer ago than this: 30d, 12h, 2w, 90m (at least 1h)', required: true }),
    'dry-run': Flags.boolean({ description: 'Count them and delete nothing' }),
    yes: yesFlag,
  };

  async run(): Promise<OperationPruneReport> {
    const olderThanMs = pruneAge(this.flags['older-than']);
    const berth = await this.berth();
    const counted = await berth.pruneOperations({ olderThanMs, dryRun: true });
    if (this.flags['dry-run'] || counted.pruned === 0) {
      const what = `${counted.pruned} finished operation${counted.pruned === 1 ? '' : 's'} ended before ${counted.endedBefore}`;
      this.log(this.flags['dry-run'] ? `${what}: --dry-run, nothing deleted` : `${what}: nothing to delete`);
      return { ...counted, dryRun: this.flags['dry-run'] };
    }
    await this.confirm(
      `Delete ${counted.pruned} finished operation${counted.pruned === 1 ? '' : 's'} that ended before ${counted.endedBefore}, with their journal?`,
      `berth operation prune --older-than ${this.flags['older-than']}`,
    );
    // The confirmed cut: no operation that ended after what was counted goes.
    const report = await this.withSpinner('Pruning the journal', () => berth.pruneOperations({ olderThanMs, endedBefore: counted.endedBefore }));
    this.log(`Deleted ${report.pruned} finished operation${report.pruned === 1 ? '' : 's'} that ended before ${report.endedBefore}`);
    return report;
  }
}
