import type { DoctorEntry, PluginReport } from '@berth/core';
import { BaseCommand, outputFlag } from '../base-command.js';
import { renderTable } from '../table.js';
import { doctorColumns } from '../views.js';

/** `berth doctor`'s JSON: every check, and what the plugin loader found. */
export interface DoctorReport {
  entries: DoctorEntry[];
  plugins: PluginReport;
}

/** `berth doctor`: which transports, backends and consumers work on this host, and why not. */
export default class Doctor extends BaseCommand<typeof Doctor> {
  static override summary = 'Check what works on this host';
  static override description = [
    'Check every transport, backend, consumer, the store and the plugins: what works on this host, and',
    'for what does not, why and how to fix it. Exits 0 even when something is unavailable; read the',
    '`ok` column (or `entries[].result.ok` in --json).',
  ].join('\n');
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> -o wide', '<%= config.bin %> <%= command.id %> --json'];
  static override reportsPlugins = true;

  static override flags = { output: outputFlag };

  async run(): Promise<DoctorReport> {
    const berth = await this.berth();
    const entries = await berth.doctor();
    const plugins = berth.plugins();
    const wide = this.flags.output === 'wide';
    this.log(renderTable(doctorColumns, entries, { wide }));
    const fixes = entries.filter((e) => !e.result.ok && e.result.fix !== undefined);
    if (!wide && fixes.length > 0) {
      this.log('');
      this.log('To fix:');
      for (const entry of fixes) this.log(`  ${entry.kind} ${entry.name}: ${entry.result.fix ?? ''}`);
    }
    if (plugins.loaded.length > 0 || plugins.failed.length > 0) {
      this.log('');
      this.log('Plugins:');
      for (const plugin of plugins.loaded) {
        const provides = [
          ...plugin.transports.map((name) => `transport ${name}`),
          ...plugin.backends.map((name) => `backend ${name}`),
          ...plugin.consumers.map((name) => `consumer ${name}`),
        ];
        const version = plugin.version === undefined ? '' : `@${plugin.version}`;
        this.log(`  ok      ${plugin.packageName}${version}: ${provides.join(', ') || 'nothing registered'}`);
      }
      for (const failure of plugins.failed) {
        this.log(`  FAILED  ${failure.packageName}: ${failure.error}`);
      }
    }
    return { entries, plugins };
  }
}
