import { existsSync } from 'node:fs';
import { BerthError, consumerNameFor } from '@berth/core';

/** What still needs a plugin's drivers in this berth's state (one line each, for the error). */
export interface PluginUse {
  plugin: string;
  uses: string[];
}

/**
 * What this host's berth state (the embedded store of the data dir, `BERTH_DATA_DIR` or the
 * default) still needs of the plugins `names` (npm package names, as `berth plugins uninstall`
 * takes them): attachments connected through a transport it registers or published by its
 * consumer, and volumes on its backend. Without the plugin none of them can be detached or
 * deleted (the detach fails `PLUGIN_ERROR` until it is installed again). `pluginDirs`: where
 * `berth plugins` installs (oclif's data dir). A data dir berth never
 * made holds nothing: nothing is opened or created then.
 */
export async function pluginsInUse(names: readonly string[], pluginDirs: string[], env: NodeJS.ProcessEnv = process.env): Promise<PluginUse[]> {
  const runtime = await import('@berth/runtime');
  if (!existsSync(runtime.defaultDataDir(env))) return [];
  // With the plugins `berth plugins` installed, as every command loads them.
  const berth = await runtime.openBerth({ recover: false, env, pluginDirs });
  try {
    const report = berth.plugins();
    const wanted = report.loaded.filter((p) => names.includes(p.packageName) || names.includes(p.name));
    if (wanted.length === 0) return [];
    const [volumes, servers, attachments] = await Promise.all([berth.listVolumes(), berth.listServers(), berth.listAttachments()]);
    const volumeName = new Map(volumes.map((v) => [v.id, v.name]));
    const serverById = new Map(servers.map((s) => [s.id, s]));
    // A guest server's consumer is its hypervisor's; a plugin replacing the default `host` one is not looked for.
    const defaultConsumer = 'host';
    return wanted.flatMap((plugin) => {
      const uses: string[] = [];
      for (const a of attachments) {
        if (a.status === 'detached') continue;
        const server = serverById.get(a.serverId);
        const consumer = server ? consumerNameFor(server, defaultConsumer) : undefined;
        const what = `attachment ${a.id} of volume ${volumeName.get(a.volumeId) ?? a.volumeId}`;
        if (a.transport !== null && plugin.transports.includes(a.transport)) uses.push(`${what} (connected by its transport ${a.transport})`);
        else if (consumer !== undefined && plugin.consumers.includes(consumer)) uses.push(`${what} (published by its consumer ${consumer})`);
      }
      for (const v of volumes) if (plugin.backends.includes(v.backend)) uses.push(`volume ${v.name} (on its backend ${v.backend})`);
      return uses.length === 0 ? [] : [{ plugin: plugin.packageName, uses }];
    });
  } finally {
    await berth.close();
  }
}

/** The refusal of an uninstall that would strand attachments or volumes (CONFLICT). */
export function pluginInUseError(inUse: readonly PluginUse[]): BerthError {
  const lines = inUse.flatMap((p) => p.uses.slice(0, 5).map((u) => `${p.plugin}: ${u}`).concat(p.uses.length > 5 ? [`${p.plugin}: and ${p.uses.length - 5} more`] : []));
  return new BerthError('CONFLICT', `not uninstalling: berth still needs ${inUse.map((p) => p.plugin).join(', ')} here —\n  ${lines.join('\n  ')}`, {
    hint: 'detach those attachments and delete those volumes first (berth detach VOLUME, berth volume delete VOLUME); or uninstall anyway with --force (they cannot be detached or deleted until the plugin is installed again)',
    details: { plugins: inUse.map((p) => p.plugin) },
  });
}
