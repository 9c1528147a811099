import { Args, Flags } from '@oclif/core';
import type { Volume } from '@berth/core';
import { BerthError } from '@berth/core/errors';
import { BaseCommand } from '../../base-command.js';
import { formatSize } from '@berth/runtime/size';
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
    // Checked here too so the error speaks in the sizes the user typed, not in bytes.
    const current = await berth.getVolume(ref);
    if (sizeBytes <= current.sizeBytes) {
      throw new BerthError('VALIDATION', `volume ${current.name} is already ${formatVolumeSize(current)}; --size ${this.flags.size} (${formatSize(sizeBytes)}) does not grow it`, {
        hint: `give a size larger than ${formatVolumeSize(current)}, such as --size ${formatSize(nextSize(current.sizeBytes)).replace(' ', '')}; volumes never shrink`,
        details: { sizeBytes: current.sizeBytes, requested: sizeBytes },
      });
    }
    const volume = await this.withSpinner(`Extending volume ${current.name}`, () => berth.extendVolume(current.id, sizeBytes));
    this.log(`Volume ${volume.name} is now ${formatVolumeSize(volume)} (${volume.sizeBytes} bytes)`);
    return volume;
  }
}

// A round size above `bytes` for the hint: the next whole GiB (or MiB below 1 GiB).
function nextSize(bytes: number): number {
  const unit = bytes >= 1024 ** 3 ? 1024 ** 3 : 1024 ** 2;
  return (Math.floor(bytes / unit) + 1) * unit;
}
