import { Args } from '@oclif/core';
import { stopManagedTgtd, zTgtBackendOptions } from '@berth/backend-tgt';
import { BerthError } from '@berth/core/errors';
import { BaseCommand } from '../../base-command.js';

/** What `berth backend stop` did. */
export interface BackendStopResult {
  backend: 'tgt';
  wasRunning: boolean;
  pid: number | null;
  /** True when the daemon did not leave when asked and was killed. */
  killed: boolean;
}

/** `berth backend stop tgt`: stop the daemon berth runs for a backend. */
export default class BackendStop extends BaseCommand<typeof BackendStop> {
  static override summary = "Stop the daemon berth runs for a backend";
  static override description = [
    "Stop what berth runs in the background for a backend. `tgt`: berth's own tgtd (the one the tgt",
    "backend starts on first use, with its control port from the config), asked to leave through",
    'tgtadm and killed if it does not. It refuses while a tgt volume is attached or busy: detach those',
    'first. The daemon starts again with the next tgt operation (a running `berth serve` leaves it',
    'stopped until then). Runs on this host only (not with --api).',
  ].join('\n');
  static override examples = ['<%= config.bin %> <%= command.id %> tgt', '<%= config.bin %> <%= command.id %> tgt --json'];

  static override args = {
    backend: Args.string({ description: 'The backend whose daemon to stop', options: ['tgt'], required: true }),
  };

  async run(): Promise<BackendStopResult> {
    if (this.flags.api !== undefined && this.flags.api !== '') {
      throw new BerthError('UNPROCESSABLE', "berth backend stop stops a daemon on the host it runs on, not the API's", {
        hint: 'run it on the API host, without --api (and unset BERTH_API_URL)',
      });
    }
    const berth = await this.berth();
    const busy = (await berth.listVolumes()).filter((volume) => volume.backend === 'tgt' && volume.status !== 'available');
    if (busy.length > 0) {
      throw new BerthError('CONFLICT', `tgt volumes are in use: ${busy.map((v) => `${v.name} (${v.status})`).join(', ')}; stopping tgtd would cut their sessions`, {
        hint: `detach them first (\`berth detach ${busy[0]?.name ?? 'VOLUME'}\`), then stop it`,
        details: { volumes: busy.map((v) => v.id) },
      });
    }
    const { loadConfig } = await import('@berth/runtime');
    const config = await loadConfig(this.openBerthOptions());
    const options = zTgtBackendOptions.safeParse(config.pluginOptions['@berth/backend-tgt'] ?? {});
    if (!options.success) {
      throw new BerthError('CONFIG', `the tgt backend's options in the config are invalid: ${options.error.issues.map((i) => i.message).join('; ')}`, {
        hint: 'fix pluginOptions["@berth/backend-tgt"] in the config file (see `berth doctor`)',
      });
    }
    if (!options.data.manageDaemon) {
      throw new BerthError('UNPROCESSABLE', `berth does not run this tgtd (manageDaemon is false: it drives the tgtd on control port ${options.data.controlPort})`, {
        hint: 'stop that tgtd the way it was started (its service manager)',
      });
    }
    const result = await stopManagedTgtd(config.dataDir, options.data.controlPort);
    if (!result.wasRunning) this.log(`berth's tgtd (control port ${options.data.controlPort}) was not running`);
    else this.log(`Stopped berth's tgtd (pid ${result.pid ?? '?'}, control port ${options.data.controlPort})${result.killed ? ': it did not leave when asked and was killed' : ''}`);
    return { backend: 'tgt', wasRunning: result.wasRunning, pid: result.pid ?? null, killed: result.killed };
  }
}
