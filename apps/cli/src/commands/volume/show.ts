import { hostname } from 'node:os';
import { Args, Flags } from '@oclif/core';
import { ownerState, type Attachment, type BerthService, type Volume } from '@berth/core';
import { BaseCommand } from '../../base-command.js';
import { nameIndex } from '../../format.js';
import { renderFields, renderTable } from '../../table.js';
import { resourceRef } from '../../validate.js';
import { attachmentColumns, volumeFields } from '../../views.js';

/** `berth volume show`: one volume and its attachments. */
export default class VolumeShow extends BaseCommand<typeof VolumeShow> {
  static override summary = 'Show a volume';
  static override description = 'Show a volume (by name or id) and its attachments.';
  static override examples = [
    '<%= config.bin %> <%= command.id %> data1',
    '<%= config.bin %> <%= command.id %> data1 --json',
    '<%= config.bin %> <%= command.id %> db1 --show-secrets   # the CHAP user and password of a tgt volume',
  ];

  static override flags = {
    'show-secrets': Flags.boolean({
      description: "Also print the volume's access secrets (CHAP user and password) from its backend; they are never shown otherwise",
      default: false,
    }),
  };

  static override args = {
    volume: Args.string({ description: 'Volume name or id', required: true }),
  };

  async run(): Promise<Volume & { attachments: Attachment[]; credentials?: Record<string, string> }> {
    const ref = resourceRef(this.args.volume, 'volume');
    const berth = await this.berth();
    const volume = await berth.getVolume(ref);
    const attachments = await berth.listAttachments({ volume: volume.id });
    this.log(renderFields(volumeFields(volume)));
    for (const note of await interrupted(berth, volume)) this.log(note);
    if (attachments.length > 0) {
      const [servers, hosts] = await Promise.all([berth.listServers(), berth.listHosts()]);
      this.log('');
      this.log(renderTable(attachmentColumns(nameIndex([volume], servers, hosts)), attachments));
    }
    if (!this.flags['show-secrets']) return { ...volume, attachments };
    const credentials = await berth.volumeCredentials(volume.id);
    this.log('');
    this.log(Object.keys(credentials).length > 0 ? renderFields(Object.entries(credentials)) : `backend ${volume.backend} keeps no secrets for this volume`);
    return { ...volume, attachments, credentials };
  }
}

/**
 * For a volume left in a passing status by an attach or detach whose process is gone: why it is
 * still there. Every command recovers such operations when it opens berth — except while the dead
 * process's commands still run (its berth-spawner waits for them: nothing acts on the volume under
 * them) and on a store opened read-only (a full or read-only data dir). Embedded only: a server's
 * operations are its replicas' to judge.
 */
async function interrupted(berth: BerthService, volume: Volume): Promise<string[]> {
  if (berth.recover === undefined || ['available', 'in-use', 'error'].includes(volume.status)) return [];
  const running = await berth.listOperations({ state: 'running', volumeId: volume.id });
  const notes: string[] = [];
  for (const op of running) {
    const owner = ownerState(op.owner, hostname(), '');
    const pid = op.owner?.split('@')[0] ?? '?';
    if (owner.state === 'commands') {
      notes.push(`Note: its ${op.kind} (operation ${op.id}) lost its process (${pid}) while a command it started still runs; the first berth command after that command ends finishes the ${op.kind} (or rolls it back)`);
    } else if (owner.state === 'dead') {
      notes.push(`Note: its ${op.kind} (operation ${op.id}) lost its process (${pid}); the next berth command that can write to the data dir finishes it (or rolls it back), or run \`berth reconcile\``);
    }
  }
  return notes;
}
