import { Args, Flags } from '@oclif/core';
import type { OperationOutcome } from '@berth/core';
import { BaseCommand } from '../base-command.js';
import { formatTimings, operationTimings } from '../format.js';
import { renderFields } from '../table.js';
import { resourceRef } from '../validate.js';

/** `berth detach`: detach a volume from a server. */
export default class Detach extends BaseCommand<typeof Detach> {
  static override summary = 'Detach a volume';
  static override description = [
    'Detach a volume: remove the published link, disconnect the device on the host, remove the',
    'backend\'s export and delete the attachment. --server picks the server when the volume is',
    'attached to several; --force goes on through driver and backend errors and reports them all.',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> <%= command.id %> data1',
    '<%= config.bin %> <%= command.id %> shared --server web-1',
    '<%= config.bin %> <%= command.id %> data1 --force --json',
  ];

  static override args = {
    volume: Args.string({ description: 'Volume name or id', required: true }),
  };

  static override flags = {
    server: Flags.string({ description: 'Server name or id (needed when attached to several)' }),
    force: Flags.boolean({ description: 'Go on through driver/backend errors', default: false }),
  };

  async run(): Promise<OperationOutcome> {
    const volume = resourceRef(this.args.volume, 'volume');
    const server = this.flags.server === undefined ? undefined : resourceRef(this.flags.server, 'server');
    const berth = await this.berth();
    const outcome = await this.withSpinner(`Detaching volume ${volume}`, () =>
      berth.detach({ volume, force: this.flags.force, ...(server === undefined ? {} : { server }) }),
    );
    this.log(`Detached volume ${outcome.volume.name} (${outcome.volume.id}); it is now ${outcome.volume.status}`);
    // The detach steps' timings live in the journal (the attachment's own are the attach's).
    const timings = operationTimings(outcome.operation);
    this.log(
      renderFields(
        [
          ['device', outcome.attachment?.device?.path ?? '-'],
          ['attachment', outcome.attachment?.id ?? '-'],
          ['operation', outcome.operation.id],
          ['timings', formatTimings(timings, true)],
        ],
        '  ',
      ),
    );
    return outcome;
  }
}

