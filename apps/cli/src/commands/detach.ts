import { Args, Flags } from '@oclif/core';
import type { BerthService, OperationOutcome } from '@berth/core';
import { BerthError } from '@berth/core/errors';
import { BaseCommand, yesFlag } from '../base-command.js';
import { formatTimings, operationTimings } from '../format.js';
import { renderFields } from '../table.js';
import { resourceRef } from '../validate.js';

/** `berth detach`: detach a volume from a server. */
export default class Detach extends BaseCommand<typeof Detach> {
  static override summary = 'Detach a volume';
  static override description = [
    'Detach a volume: unpublish it (a guest server\'s disk is unplugged from the guest first, waiting',
    'for the guest to release it), disconnect the device on the host, remove the backend\'s export and',
    'delete the attachment. --server picks the server when the volume is attached to several; --force',
    'goes on through driver and backend errors and reports them all (it asks first on a terminal;',
    'without one it needs --yes). --force never tears the host side down while a guest still holds',
    'the disk: only once it is gone from the guest, or the QEMU/libvirt domain is not running; a guest',
    'that does not let go fails the detach with TIMEOUT naming the guest, and the volume stays attached.',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> <%= command.id %> data1',
    '<%= config.bin %> <%= command.id %> shared --server web-1',
    '<%= config.bin %> <%= command.id %> data1 --force --yes --json',
  ];

  static override args = {
    volume: Args.string({ description: 'Volume name or id', required: true }),
  };

  static override flags = {
    server: Flags.string({ description: 'Server name or id (needed when attached to several)' }),
    force: Flags.boolean({ description: 'Go on through driver/backend errors, never past a guest still holding the disk (asks first; --yes does not)', default: false }),
    yes: yesFlag,
  };

  async run(): Promise<OperationOutcome> {
    const volume = resourceRef(this.args.volume, 'volume');
    const server = this.flags.server === undefined ? undefined : resourceRef(this.flags.server, 'server');
    if (this.flags.force) {
      await this.confirm(
        `Force the detach of volume ${volume}, going on through driver and backend errors?`,
        `berth detach ${this.args.volume}${server === undefined ? '' : ` --server ${server}`} --force`,
      );
    }
    const berth = await this.berth();
    const request = { volume, force: this.flags.force, ...(server === undefined ? {} : { server }) };
    const outcome = await this.withSpinner(`Detaching volume ${volume}`, () =>
      this.untilDone(
        berth,
        'detach',
        () => berth.startDetach(request),
        () => berth.detach(request),
      ),
    ).catch(async (error: unknown) => {
      throw await nameTheServers(error, berth, this.args.volume, this.flags.force);
    });
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


/**
 * A detach of a volume attached to several servers fails with the servers' ids in its details: say
 * their names, and the command that picks each one.
 */
async function nameTheServers(error: unknown, berth: BerthService, volume: string, force: boolean): Promise<unknown> {
  if (!BerthError.is(error)) return error;
  const ids = error.details['servers'];
  if (!Array.isArray(ids) || ids.length < 2 || !ids.every((id): id is string => typeof id === 'string')) return error;
  const servers = new Map((await berth.listServers().catch(() => [])).map((s) => [s.id, s.name]));
  const names = ids.map((id) => servers.get(id) ?? id);
  const command = (name: string): string => `berth detach ${volume} --server ${name}${force ? ' --force' : ''}`;
  return new BerthError(error.code, `volume ${volume} is attached to ${names.length} servers: ${names.join(', ')}`, {
    hint: `name the server to detach it from: ${names.map((name) => `\`${command(name)}\``).join(' or ')}`,
    details: error.details,
    cause: error,
  });
}
