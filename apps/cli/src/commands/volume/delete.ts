import { Args } from '@oclif/core';
import { volumeInUseError } from '@berth/core';
import { BaseCommand, yesFlag } from '../../base-command.js';
import { resourceRef } from '../../validate.js';

/** `berth volume delete`: remove an available volume and its storage. */
export default class VolumeDelete extends BaseCommand<typeof VolumeDelete> {
  static override summary = 'Delete a volume';
  static override aliases = ['volume:rm'];
  static override description =
    'Delete an available volume and its storage. An attached volume must be detached first. Asks first on a terminal; without one (scripts, CI) it needs --yes.';
  static override examples = ['<%= config.bin %> <%= command.id %> data1', '<%= config.bin %> <%= command.id %> 0b9f7c1e-4f7e-4d43-9a55-3f1c2d7a8e10 --yes --json'];

  static override args = {
    volume: Args.string({ description: 'Volume name or id', required: true }),
  };

  static override flags = { yes: yesFlag };

  async run(): Promise<{ deleted: true; id: string; name: string }> {
    const ref = resourceRef(this.args.volume, 'volume');
    const berth = await this.berth();
    // Resolve first so the output names what was deleted even when given an id.
    const volume = await berth.getVolume(ref);
    // Refused before the question: asking to confirm what cannot happen wastes the answer.
    const inUse = volumeInUseError(volume, await berth.listAttachments({ volume: volume.id }));
    if (inUse) throw inUse;
    await this.confirm(`Delete volume ${volume.name} (${volume.id}) and its storage?`, `berth volume delete ${volume.name}`);
    await this.withSpinner(`Deleting volume ${volume.name}`, () => berth.deleteVolume(volume.id));
    this.log(`Deleted volume ${volume.name} (${volume.id})`);
    return { deleted: true, id: volume.id, name: volume.name };
  }
}
