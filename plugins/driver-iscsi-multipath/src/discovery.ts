import { BerthError } from '@berth/core';
import { formatPortal, kernelLun, lunKey, messageOf, sendTargets, targetKey, toPortal, type PortalTarget } from '@berth/iscsi';
import type { MultipathVolume, PathTarget } from './multipath-connection.js';
import type { MultipathContext } from './multipath-context.js';

/** The paths a SendTargets discovery found, and the node records it left that berth must clean up. */
export interface DiscoveredPaths {
  paths: PathTarget[];
  /** Target keys of the paths' node records the (persistent) discovery created: the attach's to delete. */
  createdRecords: Set<string>;
}

/**
 * SendTargets discovery through the volume's `target_portal` (with discovery CHAP when given), as
 * os-brick does when a connection has no `target_portals`: the paths are the portals listed for
 * the volume's target (or for every target, with `discoveryTargets: 'all'`), each with the
 * connection's LUN. The discovery record, which stores the discovery password in plain text, is
 * deleted afterwards even when discovery failed.
 *
 * `nonpersistent` (the default) leaves the node database alone. `persistent` is open-iscsi's
 * default behaviour, which rewrites every returned node record with defaults: the `node.startup`
 * values it resets are saved before and restored after, as os-brick does.
 */
export async function discoverPaths(ctx: MultipathContext, volume: MultipathVolume, signal: AbortSignal): Promise<DiscoveredPaths> {
  const { options, logger, lifecycle } = ctx;
  const portalText = formatPortal(volume.primary.portal);
  const persistent = options.discoveryMode === 'persistent';
  const before = persistent ? await startupValues(ctx, signal) : undefined;
  let offered: PortalTarget[];
  try {
    offered = await sendTargets(lifecycle.sessionHost, portalText, volume.discoveryAuth, { signal, cleanupSignal: () => lifecycle.cleanupSignal(), persistent });
  } finally {
    if (before !== undefined) await restoreStartup(ctx, before, lifecycle.cleanupSignal());
  }
  const wanted = offered.filter((t) => options.discoveryTargets === 'all' || t.iqn === volume.primary.iqn);
  if (wanted.length === 0) {
    throw new BerthError(
      'NOT_FOUND',
      `SendTargets at ${portalText} does not offer ${volume.primary.iqn} to this host (it listed ${offered.length} portal(s) of ${new Set(offered.map((t) => t.iqn)).size} target(s))`,
      {
        hint: 'check the IQN and portal in the connection_info, and that the backend allowed this host\'s initiator name (`berth connector`)',
        details: { offered: [...new Set(offered.map((t) => t.iqn))] },
      },
    );
  }
  const paths: PathTarget[] = [];
  const seen = new Set<string>();
  for (const t of wanted) {
    const p = toPortal({ host: t.portal.host, port: t.portal.port });
    const path: PathTarget = { iqn: t.iqn, portal: p, portalText: formatPortal(p), lun: volume.primary.lun, kernelLun: kernelLun(volume.primary.lun, volume.addressing) };
    if (seen.has(lunKey(path))) continue;
    seen.add(lunKey(path));
    paths.push(path);
  }
  const createdRecords = new Set<string>();
  if (before !== undefined) {
    const ours = new Set(paths.map((p) => targetKey(p)));
    const after = await startupValues(ctx, lifecycle.cleanupSignal()).catch(() => new Map<string, RecordStartup>());
    for (const [key, record] of after) {
      if (before.has(key)) continue;
      if (ours.has(key)) {
        createdRecords.add(key);
        continue;
      }
      // Records of other targets the portal listed (other volumes of this host): this discovery
      // made them and nothing logs in through them.
      await ctx.iscsiadm.nodeDelete({ iqn: record.iqn, portal: record.portalText }, { signal: lifecycle.cleanupSignal() }).catch((error: unknown) => {
        logger.warn({ iqn: record.iqn, portal: record.portalText, error: messageOf(error) }, 'could not delete a node record the discovery made');
      });
    }
  }
  logger.info({ portal: portalText, iqn: volume.primary.iqn, paths: paths.map((p) => p.portalText) }, 'SendTargets discovery found the paths');
  return { paths, createdRecords };
}

/** A node record's identity and `node.startup`. */
interface RecordStartup {
  iqn: string;
  portalText: string;
  startup: string;
}

/** `node.startup` of every node record (`iscsiadm -m node --op show`), by target key. */
async function startupValues(ctx: MultipathContext, signal: AbortSignal): Promise<Map<string, RecordStartup>> {
  const out = new Map<string, RecordStartup>();
  for (const record of await ctx.iscsiadm.nodeShowAll({ signal })) {
    const iqn = record['node.name'];
    const address = record['node.conn[0].address'];
    const port = record['node.conn[0].port'];
    const startup = record['node.startup'];
    if (iqn === undefined || address === undefined || port === undefined || startup === undefined) continue;
    try {
      const portal = toPortal({ host: address, port: Number(port) });
      out.set(targetKey({ iqn, portal }), { iqn, portalText: formatPortal(portal), startup });
    } catch {
      // A record whose address berth cannot read is not one it will log in through.
    }
  }
  return out;
}

/** Put back the `node.startup` values a persistent discovery reset (os-brick's `_recover_node_startup_values`). */
async function restoreStartup(ctx: MultipathContext, before: Map<string, RecordStartup>, signal: AbortSignal): Promise<void> {
  let after: Map<string, RecordStartup>;
  try {
    after = await startupValues(ctx, signal);
  } catch (error) {
    ctx.logger.warn({ error: messageOf(error) }, 'could not read the node records after discovery; node.startup values may have been reset');
    return;
  }
  for (const [key, old] of before) {
    const now = after.get(key);
    if (now === undefined || now.startup === old.startup) continue;
    try {
      await ctx.iscsiadm.nodeUpdate({ iqn: old.iqn, portal: old.portalText }, 'node.startup', old.startup, { signal });
      ctx.logger.info({ iqn: old.iqn, portal: old.portalText, startup: old.startup }, 'restored node.startup after discovery');
    } catch (error) {
      ctx.logger.warn({ iqn: old.iqn, portal: old.portalText, error: messageOf(error) }, 'could not restore node.startup after discovery');
    }
  }
}
