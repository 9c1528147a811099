import { Args, Flags, ux } from '@oclif/core';
import { ERROR_CODES, EXIT_CODES, parseWith, pickHost, zForgetHostOptions, zHostRef, type BerthErrorCode, type ForgetHostReport, type ForgottenAttachment } from '@berth/core';
import { BaseCommand, outputFlag, yesFlag } from '../../base-command.js';
import { renderTable, type Column } from '../../table.js';

/** Columns of `berth host forget`: each attachment of the host, its export and what became of it. */
const attachmentColumns: ReadonlyArray<Column<ForgottenAttachment>> = [
  { header: 'volume', get: (a) => a.volume },
  { header: 'server', get: (a) => a.server ?? '-' },
  { header: 'was', get: (a) => a.status },
  { header: 'export', get: (a) => a.export },
  { header: 'result', get: (a) => (a.state === 'dropped' ? `dropped, volume ${a.volumeStatus ?? '?'}` : `${a.state}: ${a.error ?? ''}`), shrink: true },
  { header: 'attachment', get: (a) => a.id, wide: true },
];

const isErrorCode = (code: string | null): code is BerthErrorCode => code !== null && (ERROR_CODES as readonly string[]).includes(code);

/** `berth host forget`: a host that is gone for good gives its volumes back. */
export default class HostForget extends BaseCommand<typeof HostForget> {
  static override summary = 'Forget a host that is gone for good, freeing its volumes';
  static override description = [
    'For a host that will never come back (the machine is dead): a detach cannot finish there, so its',
    'volumes would stay attached (or `error`) for good. Each attachment on the host loses the backend\'s',
    'export to the host (the controller side only, as `berth detach --force` removes it; nothing is asked',
    'of the host) and its record, and its volume is `available` again (`in-use` while attached elsewhere);',
    'operations a dead berth left on the host end (failed, CANCELLED), the host\'s pending agent work is',
    'cancelled, and its servers and the host are removed. Refused while the host\'s `berth agent` is online',
    '(heard from within agent.offlineAfterMs), for the host berth runs on, and while a live berth process',
    'runs an operation there (nothing is changed: run it again once those have ended). A host that never',
    'ran `berth agent` (another replica\'s or an embedded berth\'s own host) with attachments, or an operation',
    'a berth on the host itself owns without a lease, cannot be judged dead by berth: refused unless',
    '--assume-dead. The agent is checked again before each export is removed and before the host goes: if',
    'it came back, forget stops there. An attachment whose',
    'export cannot be removed is kept, and so is the host: fix the cause and run it again, which finishes',
    'it; a host already forgotten is nothing to do. Fence the machine first (power it off): if it still',
    'runs, a device it connected keeps writing to a volume that may then be attached elsewhere. The config\'s',
    'agent tokens that name the host are listed for you to remove. Asks first on a terminal; without one',
    '(scripts, CI) it needs --yes. With --api it needs an admin token.',
  ].join(' ');
  static override examples = [
    '<%= config.bin %> <%= command.id %> h-3',
    '<%= config.bin %> <%= command.id %> h-3 --yes --json',
    '<%= config.bin %> <%= command.id %> h-5 --assume-dead   # h-5 has no agent; powered off first',
    '<%= config.bin %> <%= command.id %> h-3 --yes --api https://controller:8776',
  ];

  static override args = {
    host: Args.string({ description: 'Host name or id (see `berth host list`)', required: true }),
  };

  static override flags = {
    yes: yesFlag,
    output: outputFlag,
    'assume-dead': Flags.boolean({
      description:
        'Assert the machine is dead, for what berth cannot judge itself: a host with no agent, or operations a berth on that host owns without a lease. FENCE THE MACHINE FIRST (power it off, or cut it from the storage network): if it still runs, it keeps writing to volumes that may then be attached elsewhere. Never overrides an agent heard from lately',
      default: false,
    }),
  };

  async run(): Promise<ForgetHostReport> {
    const ref = parseWith(zHostRef, this.args.host, 'host');
    const options = parseWith(zForgetHostOptions, this.flags['assume-dead'] ? { assumeDead: true } : {}, 'host forget options');
    const berth = await this.berth();
    // Resolved as the service resolves it, and sent by id: the host confirmed is the host forgotten.
    const hosts = await berth.listHosts();
    const known = pickHost(hosts, ref);
    // A host not known is nothing to destroy: no question, the service says so.
    if (known !== undefined) {
      await this.confirm(
        `Forget host ${known.name} (${known.id}) for good, dropping its attachments without it and freeing their volumes${options.assumeDead === true ? ' (you assert the machine is dead and fenced)' : ''}?`,
        // Its name, unless that names another host's id.
        `berth host forget ${pickHost(hosts, known.name) === known ? known.name : known.id}${options.assumeDead === true ? ' --assume-dead' : ''}`,
      );
    }
    const report = await this.withSpinner(`Forgetting host ${known?.name ?? ref}`, () => berth.forgetHost(known?.id ?? ref, options));
    this.print(report);
    const firstFailure = report.attachments.find((a) => a.state !== 'dropped');
    if (firstFailure) process.exitCode = isErrorCode(firstFailure.errorCode) ? EXIT_CODES[firstFailure.errorCode] : 1;
    return report;
  }

  private print(report: ForgetHostReport): void {
    const name = report.host.name;
    if (report.alreadyGone) {
      this.log(`No host ${name}: nothing to do (already forgotten?). See \`berth host list\`.`);
    } else {
      if (report.attachments.length > 0) this.log(renderTable(attachmentColumns, report.attachments, { wide: this.flags.output === 'wide' }));
      const dropped = report.attachments.filter((a) => a.state === 'dropped').length;
      const kept = report.attachments.length - dropped;
      if (report.removed) {
        this.log(`Forgot host ${name} (${report.host.id ?? '-'}): ${dropped} attachment(s) dropped without it.`);
      } else {
        this.log(`Host ${name} is kept: ${kept} attachment(s) could not be dropped (above). Fix the cause and run \`berth host forget ${name}\` again.`);
      }
      const done = [
        report.operations.length > 0 ? `ended ${report.operations.length} operation(s) a dead berth left there` : undefined,
        report.workItems.length > 0 ? `cancelled ${report.workItems.length} work item(s) of its agent` : undefined,
        report.servers.length > 0 ? `removed server(s) ${report.servers.map((s) => s.name).join(', ')}` : undefined,
      ].filter((line) => line !== undefined);
      if (done.length > 0) this.log(`${done.join('; ')}.`);
    }
    if (report.agentTokens.length > 0 && !this.jsonEnabled()) {
      ux.stderr(`Warning: agent token(s) ${report.agentTokens.join(', ')} in the config's api.tokens still name host ${name}: remove them (such a token could register the host again)`);
    }
  }
}
