import { Args, Flags } from '@oclif/core';
import type { Volume } from '@berth/core';
import { BaseCommand } from '../../base-command.js';
import { formatVolumeSize } from '../../format.js';
import { resourceRef, volumeSize } from '../../validate.js';

/** `berth volume extend`: grow an available volume. */
export default class VolumeExtend extends BaseCommand<typeof VolumeExtend> {
  static override summary = 'Grow a volume';
  static override description = 'Grow an available volume to a new, larger size.';
  static override examples = ['<%= config.bin %> <%= command.id %> data1 --size 2GiB'];

  static override args = {
    volume: Args.string({ description: 'Volume name or id', required: true }),
  };

  static override flags = {
    size: Flags.string({ char: 's', description: 'The new size: 2GiB, 4096MiB, ... (larger than now)', required: true }),
  };

  async run(): Promise<Volume> {
    const ref = resourceRef(this.args.volume, 'volume');
    const sizeBytes = volumeSize(this.flags.size);
    const berth = await this.berth();
    const volume = await this.withSpinner(`Extending volume ${ref}`, () => berth.extendVolume(ref, sizeBytes));
    this.log(`Volume ${volume.name} is now ${formatVolumeSize(volume)} (${volume.sizeBytes} bytes)`);
    return volume;
  }
}
