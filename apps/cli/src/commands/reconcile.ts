import { Flags } from '@oclif/core';
import { BerthError, EXIT_CODES, ERROR_CODES, type BerthErrorCode, type ReconcileDifference, type ReconcileReport } from '@berth/core';
import { BaseCommand, outputFlag, yesFlag } from '../base-command.js';
import { noDifferenceHeadline } from '../format.js';
import { renderTable, type Column } from '../table.js';

/** Columns of `berth reconcile`: what differs, where, the fix, and what became of it. */
export const differenceColumns: ReadonlyArray<Column<ReconcileDifference>> = [
  { header: 'difference', get: (d) => d.kind.replaceAll('_', ' ') },
  { header: 'resource', get: (d) => d.resource, shrink: true },
  { header: 'fix', get: (d) => d.fixDetail, shrink: true },
  { header: 'result', get: (d) => (d.result === null ? d.state : `${d.state}: ${d.result}`), shrink: true },
];

const isErrorCode = (code: string | null): code is BerthErrorCode => code !== null && (ERROR_CODES as readonly string[]).includes(code);

/**
 * The exit code of a reconcile: a failed fix's first, then a failed look's (a listing that broke:
 * "no differences" there is not known, and a script must hear it), else 0. A part that simply
 * cannot be looked at (errorCode null: a transport without a listing, a guest not running) keeps 0.
 */
export function reconcileExitCode(report: Pick<ReconcileReport, 'differences' | 'unchecked'>): number {
  // `typeof`: an older server's report has no `errorCode` on its unchecked parts (the client hands
  // the answer on as sent), and that is no failure.
  const failure = report.differences.find((d) => d.state === 'failed') ?? report.unchecked.find((u) => typeof u.errorCode === 'string');
  if (!failure) return 0;
  return isErrorCode(failure.errorCode) ? EXIT_CODES[failure.errorCode] : 1;
}

/** `berth reconcile`: compare the store with the backends and this host, and fix what differs. */
export default class Reconcile extends BaseCommand<typeof Reconcile> {
  static override summary = 'Find and fix differences between berth\'s records, the backends and this host';
  static override description = [
    'Compare the database with what each backend exports and what each transport has connected on this',
    'host, list every difference with its fix, and apply the fixes (each one journalled as a step of a',
    '`reconcile` operation: see `berth operation show`). An export with no attachment is removed; a',
    'device of a berth volume with no attachment is disconnected; an attached volume whose device is',
    'gone is reconnected (or, when that fails, marked error_detaching for `berth detach --force`); a',
    'volume whose status disagrees with its attachments is recomputed. Devices and exports berth did not',
    'make are never touched. Volumes with a running operation are skipped. Exits with the error\'s code',
    'when a fix failed, or when looking at a part failed (listed under "Not checked"; a part that cannot be looked at at all keeps 0). With --api it runs on the API server\'s host, whose devices it compares (an admin',
    'token: it covers every project). With --host it compares another host\'s devices: that host\'s `berth agent`',
    'lists them and runs the fixes that touch it (the server needs the agent online). Without --dry-run it asks first on a terminal; without one (scripts, CI)',
    'it needs --yes.',
  ].join(' ');
  static override examples = [
    '<%= config.bin %> <%= command.id %> --dry-run',
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --yes --json',
    '<%= config.bin %> <%= command.id %> --dry-run --api http://127.0.0.1:8776',
    '<%= config.bin %> <%= command.id %> --host h-3 --yes --api http://127.0.0.1:8776',
  ];

  static override flags = {
    'dry-run': Flags.boolean({ description: 'List the differences and their fixes; change nothing', default: false }),
    host: Flags.string({ description: 'Compare the devices of this host (name or id) through its `berth agent` (default: the host berth runs on)' }),
    yes: yesFlag,
    output: outputFlag,
  };

  async run(): Promise<ReconcileReport> {
    const dryRun = this.flags['dry-run'];
    if (!dryRun) {
      await this.confirm('Apply every fix reconcile finds (see them first with `berth reconcile --dry-run`)?', 'berth reconcile');
    }
    const berth = await this.berth();
    if (!berth.reconcile) {
      throw new BerthError('UNPROCESSABLE', 'this berth cannot reconcile: it compares the devices of the host it runs on', {
        hint: 'run `berth reconcile` on the host itself',
      });
    }
    const reconcile = berth.reconcile.bind(berth);
    const host = this.flags.host;
    const report = await this.withSpinner(dryRun ? 'Comparing' : 'Reconciling', () => reconcile({ dryRun, ...(host === undefined ? {} : { host }) }));

    if (report.differences.length === 0) {
      this.log(noDifferenceHeadline(report.unchecked.length, host === undefined ? 'this host' : `host ${host}`));
    } else {
      this.log(renderTable(differenceColumns, report.differences, { wide: this.flags.output === 'wide' }));
    }
    for (const item of report.unchecked) this.log(`Not checked: ${item.kind} ${item.name} (${item.reason})`);
    const { found, applied, failed, skipped } = report.counts;
    if (found > 0) {
      this.log('');
      if (dryRun) {
        const fixable = report.differences.filter((d) => d.state === 'planned').length;
        this.log(`${found} difference(s), ${fixable} to fix: nothing was changed. Run \`berth reconcile\` to apply the fixes.`);
      } else {
        const journal = report.operationId === null ? '' : ` (journal: berth operation show ${report.operationId})`;
        this.log(`${applied} applied, ${failed} failed, ${skipped} skipped${journal}.`);
      }
    }
    const exitCode = reconcileExitCode(report);
    if (exitCode !== 0) process.exitCode = exitCode;
    return report;
  }
}
