import { Args, Flags } from '@oclif/core';
import type { OperationOutcome } from '@berth/core';
import { BaseCommand } from '../base-command.js';
import { formatTimings, machinePath, operationTimings } from '../format.js';
import { renderFields } from '../table.js';
import { resourceRef } from '../validate.js';

/** `berth attach`: attach a volume to a server (default: this host). */
export default class Attach extends BaseCommand<typeof Attach> {
  static override summary = 'Attach a volume';
  static override description = [
    'Attach a volume to a server: reserve it, export it from its backend, connect it on the host over a',
    'transport and publish the device. Without --server it attaches to this host (its server is created',
    'on first use). Prints the device, the stable link /dev/berth/<volume-id>, the transport and how long',
    'each step took.',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> <%= command.id %> data1',
    '<%= config.bin %> <%= command.id %> data1 --mode ro',
    '<%= config.bin %> <%= command.id %> db1 --transport iscsi-user',
    '<%= config.bin %> <%= command.id %> shared --server web-1 --json',
  ];

  static override args = {
    volume: Args.string({ description: 'Volume name or id', required: true }),
  };

  static override flags = {
    server: Flags.string({ description: 'Server name or id (default: this host\'s own server)' }),
    mode: Flags.option({ description: 'Access mode', options: ['rw', 'ro'] as const, default: 'rw' })(),
    multipath: Flags.boolean({ description: 'Ask for multipath (when the transport offers it)', default: false }),
    transport: Flags.string({ description: 'Connect with this transport (iscsi, iscsi-user, iscsi-multipath, loop) instead of the automatic choice' }),
  };

  async run(): Promise<OperationOutcome> {
    const volume = resourceRef(this.args.volume, 'volume');
    const server = this.flags.server === undefined ? undefined : resourceRef(this.flags.server, 'server');
    const berth = await this.berth();
    const request = {
      volume,
      mode: this.flags.mode,
      multipath: this.flags.multipath,
      ...(this.flags.transport === undefined ? {} : { transport: this.flags.transport }),
      ...(server === undefined ? {} : { server }),
    };
    const outcome = await this.withSpinner(`Attaching volume ${volume}`, () =>
      this.untilDone(
        berth,
        'attach',
        () => berth.startAttach(request),
        () => berth.attach(request),
      ),
    );
    const attachment = outcome.attachment;
    const serverName = attachment === undefined ? '-' : await this.serverName(attachment.serverId);
    this.log(`Attached volume ${outcome.volume.name} (${outcome.volume.id}) to server ${serverName}`);
    if (attachment !== undefined) {
      this.log(
        renderFields(
          [
            ['device', machinePath(attachment)],
            ['link', attachment.publishedPath ?? '-'],
            ...(attachment.guestDevice ? [['guest', `${attachment.guestDevice} (virtio, serial ${attachment.serial ?? '-'})`] as [string, string]] : []),
            ['transport', attachment.transport ?? '-'],
            ['mode', attachment.mode],
            ['attachment', attachment.id],
            ['operation', outcome.operation.id],
            ['timings', formatTimings(Object.keys(attachment.timings).length > 0 ? attachment.timings : operationTimings(outcome.operation))],
          ],
          '  ',
        ),
      );
    }
    return outcome;
  }

  private async serverName(id: string): Promise<string> {
    const server = await (await this.berth()).getServer(id);
    return server.name;
  }
}
