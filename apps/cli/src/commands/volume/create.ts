import { Args, Flags } from '@oclif/core';
import { BerthError } from '@berth/core';
import type { Volume } from '@berth/core';
import { BaseCommand } from '../../base-command.js';
import { volumeFields } from '../../views.js';
import { renderFields } from '../../table.js';
import { resourceName, volumeSize } from '../../validate.js';

/** `berth volume create`: a new volume on a backend. */
export default class VolumeCreate extends BaseCommand<typeof VolumeCreate> {
  static override summary = 'Create a volume';
  static override description = 'Create a volume on a backend (default: the config\'s default backend, `file`: a sparse file under the data dir).';
  static override examples = [
    '<%= config.bin %> <%= command.id %> data1 --size 1GiB',
    '<%= config.bin %> <%= command.id %> shared --size 512MiB --multiattach',
    '<%= config.bin %> <%= command.id %> --size 10G --name big --backend file --json',
  ];

  // The name as an argument, as `server create NAME` takes it; `--name` stays for scripts.
  static override args = {
    name: Args.string({ description: 'Volume name: letters, digits, ".", "_" and "-" (or --name)', required: false }),
  };

  static override flags = {
    size: Flags.string({ char: 's', description: 'Size: 1GiB, 512MiB, 10G or a number of bytes (a multiple of 512)', required: true }),
    name: Flags.string({ char: 'n', description: 'Name: letters, digits, ".", "_" and "-" (the NAME argument)' }),
    backend: Flags.string({ char: 'b', description: 'Backend that stores it (see `berth doctor`)' }),
    multiattach: Flags.boolean({ description: 'Allow attaching it to several servers at once', default: false }),
  };

  async run(): Promise<Volume & { warnings?: string[] }> {
    const name = resourceName(this.volumeName(), 'volume');
    const sizeBytes = volumeSize(this.flags.size);
    const berth = await this.berth();
    const volume = await this.withSpinner(`Creating volume ${name}`, () =>
      berth.createVolume({
        name,
        sizeBytes,
        multiattach: this.flags.multiattach,
        ...(this.flags.backend === undefined ? {} : { backend: this.flags.backend }),
      }),
    );
    this.log(`Created volume ${volume.name} (${volume.id})`);
    // A sparse volume larger than the free space works until the disk fills: say so (stderr, also with --json).
    for (const warning of volume.warnings ?? []) process.stderr.write(`Warning: ${warning}\n`);
    this.log(renderFields(volumeFields(volume), '  '));
    return volume;
  }

  /** The name from the argument or `--name`: one of them, or both the same. */
  private volumeName(): string {
    const { name: argument } = this.args;
    const { name: flag } = this.flags;
    if (argument !== undefined && flag !== undefined && argument !== flag) {
      throw new BerthError('VALIDATION', `two names given: "${argument}" and --name "${flag}"`, {
        hint: 'give the name once: `berth volume create data1 --size 1GiB`',
      });
    }
    const name = argument ?? flag;
    if (name === undefined) {
      throw new BerthError('VALIDATION', 'missing the volume\'s name', {
        hint: 'for example `berth volume create data1 --size 1GiB`; more in `berth volume create --help`',
      });
    }
    return name;
  }
}
