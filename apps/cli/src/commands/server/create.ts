import { Args, Flags } from '@oclif/core';
import { HYPERVISOR_TYPES, type Server } from '@berth/core';
import { BaseCommand } from '../../base-command.js';
import { renderFields } from '../../table.js';
import { hostName, hypervisorFromFlags, resourceName } from '../../validate.js';
import { serverFields } from '../../views.js';

/** `berth server create`: a consumer of volumes, placed on a host. */
export default class ServerCreate extends BaseCommand<typeof ServerCreate> {
  static override summary = 'Create a server';
  static override description = [
    'Create a server (the consumer volumes attach to), placed on a host (default: this host).',
    '--hypervisor says what runs it: `host` (the default) publishes attached volumes on the host',
    '(/dev/berth/<volume-id>); `qemu` (--qmp SOCKET [--bus BUS]) and `libvirt` (--domain NAME [--uri URI])',
    'also hot-plug them into that running guest, which sees a virtio disk whose serial is the volume id',
    '(the @berth/consumer-qemu / @berth/consumer-libvirt plugin must be in the config\'s plugins).',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> <%= command.id %> web-1',
    '<%= config.bin %> <%= command.id %> db-1 --host node-2 --json',
    '<%= config.bin %> <%= command.id %> vm-2 --hypervisor qemu --qmp /run/vm-2/qmp.sock',
    '<%= config.bin %> <%= command.id %> web-1 --hypervisor libvirt --domain web-1 --uri qemu:///system',
  ];

  static override args = {
    name: Args.string({ description: 'Server name: letters, digits, ".", "_" and "-"', required: true }),
  };

  static override flags = {
    host: Flags.string({ description: 'Host the server runs on (default: this host)' }),
    hypervisor: Flags.string({ description: 'What runs the server (default: host)', options: [...HYPERVISOR_TYPES] }),
    qmp: Flags.string({ description: 'qemu: the QMP socket of the guest\'s QEMU (absolute path)' }),
    bus: Flags.string({ description: 'qemu: the PCI bus disks are hot-plugged on (default: pci.0)' }),
    domain: Flags.string({ description: 'libvirt: the domain\'s name or UUID' }),
    uri: Flags.string({ description: 'libvirt: the connection URI (default: qemu:///system)' }),
  };

  async run(): Promise<Server> {
    const name = resourceName(this.args.name, 'server');
    const host = this.flags.host === undefined ? undefined : hostName(this.flags.host);
    const hypervisor = hypervisorFromFlags(this.flags);
    const berth = await this.berth();
    const server = await berth.createServer({ name, ...(host === undefined ? {} : { host }), ...(hypervisor === undefined ? {} : { hypervisor }) });
    const hosts = new Map((await berth.listHosts()).map((h) => [h.id, h]));
    this.log(`Created server ${server.name} (${server.id})`);
    this.log(renderFields(serverFields(server, hosts), '  '));
    return server;
  }
}
