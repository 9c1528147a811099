import { BerthError, type Logger } from '@berth/core';
import type { CommandResult, CommandRunner } from '@berth/host';
import {
  classifyResult,
  commandResultOf,
  formatPortal,
  kernelLun,
  parsePortalTargets,
  parseRecords,
  toIscsiadmError,
  toPortal,
  withRetry,
  type IscsiadmClient,
  type IscsiadmOp,
  type PortalTarget,
  type RetryPolicy,
} from '@berth/iscsi';
import { lunKey, targetKey, type MultipathVolume, type PathTarget } from './multipath-connection.js';
import type { MultipathDriverOptions } from './options.js';
import { messageOf } from './portal-session.js';

/** What discovery reaches the host through. */
export interface DiscoveryHost {
  runner: CommandRunner;
  iscsiadm: IscsiadmClient;
  options: MultipathDriverOptions;
  retry: RetryPolicy;
  logger: Logger;
}

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
export async function discoverPaths(
  host: DiscoveryHost,
  volume: MultipathVolume,
  signal: AbortSignal,
  cleanupSignal: () => AbortSignal,
): Promise<DiscoveredPaths> {
  const { iscsiadm, options, logger } = host;
  const portal = volume.primary.portal;
  const portalText = formatPortal(portal);
  const auth = volume.discoveryAuth;
  const secrets = [auth?.password, auth?.passwordIn].filter((s): s is string => s !== undefined && s !== '');
  const persistent = options.discoveryMode === 'persistent';
  const before = persistent ? await startupValues(host, signal) : undefined;
  let offered: PortalTarget[] = [];
  try {
    await iscsiadm.discoverydbNew(portal, options.iface, { signal });
    if (auth !== undefined) {
      await iscsiadm.discoverydbUpdate(
        portal,
        {
          method: 'CHAP',
          username: auth.username,
          password: auth.password,
          ...(auth.usernameIn === undefined ? {} : { usernameIn: auth.usernameIn }),
          ...(auth.passwordIn === undefined ? {} : { passwordIn: auth.passwordIn }),
        },
        options.iface,
        { signal },
      );
    }
    const args = ['-m', 'discoverydb', '-t', 'sendtargets', '-I', options.iface, '-p', portalText, '--discover', ...(persistent ? [] : ['--op', 'nonpersistent'])];
    offered = await withRetry(
      async () => {
        const result = await runIscsiadm(host.runner, args, { timeoutMs: options.commandTimeoutMs, signal, secrets });
        const exitClass = classifyResult('discovery', result, { absenceOk: true });
        if (exitClass === 'success') return parsePortalTargets(result.stdout);
        if (exitClass === 'benign') return [];
        throw toIscsiadmError(result, { op: 'discovery', what: `discover the portals of ${volume.primary.iqn} at ${portalText}`, secrets, absenceOk: true, timeoutMs: options.commandTimeoutMs, signal });
      },
      { ...host.retry, signal },
    );
  } finally {
    const cleanup = cleanupSignal();
    await iscsiadm.discoverydbDelete(portal, { signal: cleanup }).catch((error: unknown) => {
      logger.warn({ portal: portalText, error: messageOf(error) }, 'deleting the discovery record failed; it may hold the discovery password');
    });
    if (before !== undefined) await restoreStartup(host, before, cleanup);
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
    const path: PathTarget = {
      iqn: t.iqn,
      portal: p,
      portalText: formatPortal(p),
      lun: volume.primary.lun,
      kernelLun: kernelLun(volume.primary.lun, volume.addressing),
    };
    if (seen.has(lunKey(path))) continue;
    seen.add(lunKey(path));
    paths.push(path);
  }
  const createdRecords = new Set<string>();
  if (before !== undefined) {
    const ours = new Set(paths.map((p) => targetKey(p)));
    const after = await startupValues(host, cleanupSignal()).catch(() => new Map<string, RecordStartup>());
    for (const [key, record] of after) {
      if (before.has(key)) continue;
      if (ours.has(key)) {
        createdRecords.add(key);
        continue;
      }
      // Records of other targets the portal listed (other volumes of this host): this discovery
      // made them and nothing logs in through them.
      await iscsiadm.nodeDelete({ iqn: record.iqn, portal: record.portalText }, { signal: cleanupSignal() }).catch((error: unknown) => {
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
  targetKey: string;
  startup: string;
}

/** `node.startup` of every node record (`iscsiadm -m node --op show`), by target key. */
async function startupValues(host: DiscoveryHost, signal: AbortSignal): Promise<Map<string, RecordStartup>> {
  const result = await runIscsiadm(host.runner, ['-m', 'node', '--op', 'show'], { timeoutMs: host.options.commandTimeoutMs, signal, secrets: [] });
  const op: IscsiadmOp = 'node-show';
  const exitClass = classifyResult(op, result, { absenceOk: true });
  if (exitClass === 'benign') return new Map();
  if (exitClass !== 'success') throw toIscsiadmError(result, { op, what: 'read the node records before discovery', absenceOk: true, signal });
  const out = new Map<string, RecordStartup>();
  for (const record of parseRecords(result.stdout)) {
    const iqn = record['node.name'];
    const address = record['node.conn[0].address'];
    const port = record['node.conn[0].port'];
    const startup = record['node.startup'];
    if (iqn === undefined || address === undefined || port === undefined || startup === undefined) continue;
    try {
      const portal = toPortal({ host: address, port: Number(port) });
      const key = targetKey({ iqn, portal });
      out.set(key, { iqn, portalText: formatPortal(portal), targetKey: key, startup });
    } catch {
      // A record whose address berth cannot read is not one it will log in through.
    }
  }
  return out;
}

/** Put back the `node.startup` values a persistent discovery reset (os-brick's `_recover_node_startup_values`). */
async function restoreStartup(host: DiscoveryHost, before: Map<string, RecordStartup>, signal: AbortSignal): Promise<void> {
  let after: Map<string, RecordStartup>;
  try {
    after = await startupValues(host, signal);
  } catch (error) {
    host.logger.warn({ error: messageOf(error) }, 'could not read the node records after discovery; node.startup values may have been reset');
    return;
  }
  for (const [key, old] of before) {
    const now = after.get(key);
    if (now === undefined || now.startup === old.startup) continue;
    try {
      await host.iscsiadm.nodeUpdate({ iqn: old.iqn, portal: old.portalText }, 'node.startup', old.startup, { signal });
      host.logger.info({ iqn: old.iqn, portal: old.portalText, startup: old.startup }, 'restored node.startup after discovery reset it');
    } catch (error) {
      host.logger.warn({ iqn: old.iqn, portal: old.portalText, error: messageOf(error) }, 'could not restore node.startup after discovery');
    }
  }
}

/** Run iscsiadm and return its result whether it failed or not. */
async function runIscsiadm(
  runner: CommandRunner,
  args: string[],
  options: { timeoutMs: number; signal: AbortSignal; secrets: readonly string[] },
): Promise<CommandResult> {
  try {
    return await runner.run('iscsiadm', args, { timeoutMs: options.timeoutMs, signal: options.signal, secrets: options.secrets, reject: false });
  } catch (error) {
    const thrown = commandResultOf(error);
    if (thrown === undefined) throw error;
    return thrown;
  }
}
