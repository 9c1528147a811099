import { createHash } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { z } from '@berth/core/zod';
import { acquireFileLock, LockTimeoutError, type CommandResult } from '@berth/host';
import {
  attachmentLinks,
  BerthError,
  createHostConsumer,
  DEFAULT_LIBVIRT_URI,
  failUnreachedPublish,
  isUsableLibvirtUri,
  KeyedLock,
  lazySchema,
  stableLinkPath,
  zLibvirtHypervisor,
  type LibvirtHypervisor,
  type Attachment,
  type Consumer,
  type Device,
  type GuestDisk,
  type PluginContext,
  type Publication,
  type Server,
} from '@berth/core';
import { diskAlias, diskModeOf, diskXml, freeVirtioTarget, parseDomainDisks, type LiveDisk } from './disk-xml.js';
import { TargetHints } from './target-hints.js';
import { domainGone, Virsh, virshFailed, type DomainBlock, type RemovalWatch } from './virsh.js';

/** The consumer's name: servers with `hypervisor.type = 'libvirt'` use it. */
export const NAME = 'libvirt';

/** Options of the `libvirt` consumer (the plugin's options in the config). */
export const zLibvirtConsumerOptions = lazySchema(() => z.object({
  /** How long the guest has to release a disk after the unplug request, in ms. */
  unplugTimeoutMs: z.number().int().positive().default(60_000),
  /** Timeout of one virsh run (or one libvirt RPC call), in ms. */
  virshTimeoutMs: z.number().int().positive().default(30_000),
  /** Talk to a local `DRIVER:///system` libvirtd over its unix socket (libvirt's RPC) instead of a virsh process per call. */
  rpc: z.boolean().default(true),
}));
/** Parsed options of the `libvirt` consumer. */
export type LibvirtConsumerOptions = z.output<typeof zLibvirtConsumerOptions>;

/** A server's libvirt domain: core's schema of the server record's `hypervisor` field (`type: 'libvirt'`). */
export { zLibvirtHypervisor, DEFAULT_LIBVIRT_URI, type LibvirtHypervisor };

/** The server's libvirt settings, or a CONFIG error saying how to give them. */
export function libvirtHypervisorOf(server: Server): LibvirtHypervisor {
  const parsed = zLibvirtHypervisor.safeParse(server.hypervisor);
  if (!parsed.success) {
    throw new BerthError('CONFIG', `server ${server.name} has no libvirt domain: ${parsed.error.issues[0]?.message ?? 'invalid'}`, {
      hint: `give the server its domain: berth server create ${server.name} --hypervisor libvirt --domain NAME [--uri qemu:///system]`,
      details: { server: server.name },
    });
  }
  // A record stored before URIs were held to local ones is not run when virsh would run or read
  // what it names, as root (`qemu+ext:///…?command=`; core's `isUsableLibvirtUri`).
  if (!isUsableLibvirtUri(parsed.data.uri)) {
    throw new BerthError('CONFIG', `server ${server.name}'s libvirt URI is refused (${parsed.data.uri.replace(/\?.*$/, '?…')}): it would run or read what it names; berth reaches guests on this host through a URI like qemu:///system`, {
      hint: `nothing was done; unplug the disk by hand (virsh -c qemu:///system detach-disk ${parsed.data.domain} …) if the guest has it, and create a server with a local URI (berth server create NAME --hypervisor libvirt --domain ${parsed.data.domain} --uri qemu:///system) for new attaches`,
      details: { server: server.name, untouched: true },
    });
  }
  return parsed.data;
}

/** A guest consumer's publication: the host link, the target libvirt gave the disk (`/dev/vdb`) and the serial. */
export type GuestPublication = Publication & Required<Pick<Publication, 'guestDevice' | 'serial'>>;

/** The `libvirt` consumer: every method of the contract, guest listing and unplugging included. */
export interface LibvirtConsumer extends Consumer {
  publish(server: Server, device: Device, attachment: Attachment): Promise<GuestPublication>;
  /** The disks of the server's live domain by serial, `id` = alias (`undefined`: the domain does not run). */
  guestDisks(server: Server): Promise<GuestDisk[] | undefined>;
  unplugGuestDisk(server: Server, disk: GuestDisk): Promise<void>;
}

/** What libvirt says when a hot-plugged disk's target or alias is taken (libvirt 9.0: "target 'vdb' duplicated for disk sources ...", "non unique alias detected"). */
const TAKEN = /already exists|duplicated for disk|non.unique alias|alias .*(in use|already)/i;

/** One libvirt domain, as locks and target hints name it. */
function domainKey(hv: LibvirtHypervisor): string {
  return `${hv.uri} ${hv.domain}`;
}

/** The domain does not run: nothing can be plugged into it. */
function notRunning(server: Server, hv: LibvirtHypervisor): BerthError {
  return new BerthError('UNPROCESSABLE', `libvirt domain ${hv.domain} of server ${server.name} does not exist or is not running`, {
    hint: `start it (virsh -c ${hv.uri} start ${hv.domain}), or fix the server's domain`,
    details: { server: server.name, domain: hv.domain, untouched: true },
  });
}

/** A libvirt device alias (what `detach-device-alias` takes); never an option. */
const ALIAS = /^[A-Za-z0-9][A-Za-z0-9_.:-]*$/;

/** A disk to unplug: its alias, the volume it is of (for the error) and how to tell it is still there. */
interface UnplugTarget {
  alias: string;
  volumeId: string;
  present(): Promise<boolean>;
}

// `virsh event --timeout` counts whole seconds: a removal whose event is missed is still seen by
// the domblklist check that follows each wait, at most this long later.
const EVENT_WAIT_S = 2;
// How often an unanswered unplug request is sent again.
const REASK_MS = 5_000;

/**
 * The `libvirt` consumer, Nova's libvirt driver step: `publish` makes the host's stable link
 * (`/dev/berth/<volume-id>`), then `virsh attach-device --live` (at a target free by the domain's
 * TargetHints; the live list is read only without one or when libvirt refuses it) of a `<disk type='block'>` whose
 * source is that link, serial the volume id, alias `ua-berth-<volume id>`, cache/io/discard from
 * the connection_info and `<readonly/>` for `ro`. `unpublish` asks for the unplug (`virsh
 * detach-device-alias --live`, which returns at once) and then waits until the disk is really gone
 * from the live domain — `domblklist` checked after each `device-removed` event (`virsh event`) —
 * until `unplugTimeoutMs`. libvirt itself reports success while a guest still holds the disk, so
 * only that check counts. A guest that does not let go is a TIMEOUT naming server and domain, with
 * the host side untouched. A domain that is gone or shut off holds nothing: unpublish succeeds.
 */
export function createLibvirtConsumer(context: PluginContext<Partial<LibvirtConsumerOptions>>): LibvirtConsumer {
  const options = zLibvirtConsumerOptions.parse(context.options ?? {});
  const link = createHostConsumer(context.host.fs);
  const locks = new KeyedLock();
  const xmlDir = path.join(context.dataDir, 'consumer-libvirt');
  const virshFor = (hv: LibvirtHypervisor) => new Virsh(context.host.runner, hv.uri, options.virshTimeoutMs, xmlDir, options.rpc);
  const sourceOf = (volumeId: string) => context.host.fs.resolve(stableLinkPath(volumeId));
  const findDisk = (blocks: DomainBlock[] | undefined, volumeId: string) => blocks?.find((b) => b.source === sourceOf(volumeId));
  const hints = new TargetHints(path.join(xmlDir, 'targets'));

  /** The domain's disks (`undefined`: not running), remembered as the next attach's target hint. */
  async function blocksOf(virsh: Virsh, hv: LibvirtHypervisor): Promise<DomainBlock[] | undefined> {
    const blocks = await virsh.blocks(hv.domain);
    if (blocks === undefined) await hints.clear(domainKey(hv));
    else await hints.set(domainKey(hv), blocks.map((b) => b.target));
    return blocks;
  }

  /** `attach-device --live` of the volume's disk at `target`; the result whatever it is. */
  function attachDisk(virsh: Virsh, hv: LibvirtHypervisor, attachment: Attachment, source: string, target: string): Promise<CommandResult> {
    const xml = diskXml({ source, target, serial: attachment.volumeId, alias: diskAlias(attachment.volumeId), ...diskModeOf(attachment) });
    return virsh.attachDevice(hv.domain, xml);
  }

  async function withDomainLock<T>(server: Server, hv: LibvirtHypervisor, fn: () => Promise<T>): Promise<T> {
    const key = domainKey(hv);
    return locks.withLock(key, async () => {
      const lockDir = path.join(xmlDir, 'locks');
      await mkdir(lockDir, { recursive: true, mode: 0o700 });
      const release = await acquireFileLock(path.join(lockDir, `${createHash('sha256').update(key).digest('hex').slice(0, 32)}.lock`), {
        timeoutMs: options.virshTimeoutMs * 2,
        what: `attaches to libvirt domain ${hv.domain}`,
      }).catch((error: unknown) => {
        if (!(error instanceof LockTimeoutError)) throw error;
        throw new BerthError('TIMEOUT', `another berth process kept attaching to libvirt domain ${hv.domain} (server ${server.name}) for ${Math.round(error.timeoutMs / 1000)} s`, {
          hint: 'let the other attach to this guest finish, then try again',
          details: { server: server.name, domain: hv.domain, untouched: true },
          cause: error,
        });
      });
      try {
        return await fn();
      } finally {
        await release();
      }
    });
  }

  return {
    name: NAME,

    async publish(server, device, attachment) {
      const hv = libvirtHypervisorOf(server);
      const virsh = virshFor(hv);
      const before = await attachmentLinks(context.host.fs, attachment);
      const published = await link.publish(server, device, attachment);
      // The disk's source is the volume's link (the same device as the attachment's own): the domain
      // lists it, and findDisk/guestDisks name the volume by it.
      const source = sourceOf(attachment.volumeId);
      // Attaches to one domain go one at a time, in this process and across processes (two picking
      // the same free vdX would collide). The target comes from the hint when there is one (one
      // virsh run: attach-device); libvirt refuses a taken target or alias, and only then is the
      // live list read (a disk plugged behind berth's back, or this one already there: a re-run).
      const target = await withDomainLock(server, hv, async () => {
        const what = `plug the disk of volume ${attachment.volumeId} into libvirt domain ${hv.domain} (server ${server.name})`;
        const key = domainKey(hv);
        const hinted = await hints.get(key);
        if (hinted) {
          const free = freeVirtioTarget(hinted);
          const result = await attachDisk(virsh, hv, attachment, source, free);
          if (result.exitCode === 0) {
            await hints.set(key, [...hinted, free]);
            return free;
          }
          if (domainGone(result)) {
            await hints.clear(key);
            throw notRunning(server, hv);
          }
          if (!TAKEN.test(result.stderr)) throw virshFailed(result, what);
        }
        const blocks = await virsh.blocks(hv.domain);
        if (blocks === undefined) {
          await hints.clear(key);
          throw notRunning(server, hv);
        }
        const targets = blocks.map((b) => b.target);
        const existing = findDisk(blocks, attachment.volumeId);
        if (existing) {
          await hints.set(key, targets);
          return existing.target;
        }
        const free = freeVirtioTarget(targets);
        const result = await attachDisk(virsh, hv, attachment, source, free);
        if (result.exitCode !== 0) throw virshFailed(result, what);
        await hints.set(key, [...targets, free]);
        return free;
      }).catch((error: unknown) => failUnreachedPublish(context.host.fs, attachment, device, before, error));
      return { path: published.path, guestDevice: `/dev/${target}`, serial: attachment.volumeId };
    },

    async unpublish(server, attachment, unpublishOptions) {
      const hv = libvirtHypervisorOf(server);
      const virsh = virshFor(hv);
      const deadline = Date.now() + options.unplugTimeoutMs;
      const present = async (): Promise<boolean> => findDisk(await blocksOf(virsh, hv), attachment.volumeId) !== undefined;
      // No look first: the unplug request of a disk that is not there answers "not found", and the
      // look after the request decides (one virsh run fewer per detach).
      await unplug(virsh, hv, server, { alias: diskAlias(attachment.volumeId), volumeId: attachment.volumeId, present }, deadline);
      await link.unpublish(server, attachment, unpublishOptions);
    },

    // No server record, no domain: only the host link goes (a guest holding the device would have
    // kept reconcile's disconnect, which runs first, from happening).
    unpublishOrphan: (volumeId, device, options) => link.unpublishOrphan(volumeId, device, options),

    async guestDisks(server) {
      const hv = libvirtHypervisorOf(server);
      const disks = await liveDisks(virshFor(hv), hv);
      return disks?.flatMap((d) => (d.alias === undefined ? [] : [{ serial: d.serial, id: d.alias, plugged: d.alias === diskAlias(d.serial), ...(d.target ? { guestDevice: `/dev/${d.target}` } : {}) }]));
    },

    async unplugGuestDisk(server, disk) {
      const hv = libvirtHypervisorOf(server);
      if (!ALIAS.test(disk.id)) {
        throw new BerthError('VALIDATION', `${JSON.stringify(disk.id)} is not a libvirt device alias`, {
          hint: 'pass a disk as guestDisks lists it',
          details: { server: server.name, disk: disk.id },
        });
      }
      const virsh = virshFor(hv);
      const present = async (): Promise<boolean> => (await liveDisks(virsh, hv))?.some((d) => d.alias === disk.id) ?? false;
      if (await present()) await unplug(virsh, hv, server, { alias: disk.id, volumeId: disk.serial, present }, Date.now() + options.unplugTimeoutMs);
    },

    async check() {
      const result = await new Virsh(context.host.runner, DEFAULT_LIBVIRT_URI, options.virshTimeoutMs, xmlDir, false).run(['uri']);
      if (result.exitCode === 0) return { ok: true, summary: `virsh reaches libvirtd at ${DEFAULT_LIBVIRT_URI}` };
      const error = virshFailed(result, `reach libvirtd at ${DEFAULT_LIBVIRT_URI}`);
      return { ok: false, summary: error.message, ...(error.hint ? { fix: error.hint } : {}) };
    },
  };

  /**
   * Ask for the unplug and wait until the disk is gone from the live domain. An event watcher is
   * running before the request and before every later look, so a removal is never waited out
   * longer than one event wait.
   */
  async function unplug(virsh: Virsh, hv: LibvirtHypervisor, server: Server, disk: UnplugTarget, deadline: number): Promise<void> {
    const { volumeId } = disk;
    let watcher = await watch(virsh, hv.domain, deadline);
    const request = async (): Promise<void> => {
      const result = await virsh.detachAlias(hv.domain, disk.alias);
      // Already asked (a previous detach timed out) or already gone: the waiting below decides.
      if (result.exitCode !== 0 && !domainGone(result) && !/not found|no device found|already|in progress/i.test(result.stderr)) {
        throw virshFailed(result, `unplug the disk of volume ${volumeId} from libvirt domain ${hv.domain} (server ${server.name})`);
      }
    };
    try {
      await request();
      let askedAt = Date.now();
      for (;;) {
        if (!(await disk.present())) return;
        if (Date.now() >= deadline) break;
        // A request the guest got while it was still booting is lost for good (libvirt issue 309,
        // seen here too): ask again now and then, as Nova's detach loop does.
        if (Date.now() - askedAt >= REASK_MS) {
          await request();
          askedAt = Date.now();
        }
        await watcher.done;
        watcher = await watch(virsh, hv.domain, deadline);
      }
    } finally {
      watcher.stop();
    }
    const state = await virsh.state(hv.domain);
    const paused = /^paused/.test(state);
    throw new BerthError(
      'TIMEOUT',
      `the guest of server ${server.name} (libvirt domain ${hv.domain}, ${state}) did not release the disk of volume ${volumeId} within ${Math.round(options.unplugTimeoutMs / 1000)} s; the host side is left connected`,
      {
        hint: paused
          ? `the guest is paused and cannot answer the unplug request: virsh -c ${hv.uri} resume ${hv.domain}, then run the detach again — the request stays pending, so the guest drops the disk when it resumes; the attachment is left error_detaching until the detach runs again or \`berth reconcile\` finishes it`
          : 'the guest ignored the unplug request (still booting, or the disk is busy in it): release it in the guest, then run the detach again — the request stays pending (the guest may drop the disk on its own later), so the attachment is left error_detaching until the detach runs again or `berth reconcile` finishes it',
        details: { server: server.name, volumeId, domain: hv.domain, guestState: state, guestHoldsDevice: true, unplugRequested: true },
      },
    );
  }

  /** The disks of the live domain; `undefined` when it is gone or does not run. */
  async function liveDisks(virsh: Virsh, hv: LibvirtHypervisor): Promise<LiveDisk[] | undefined> {
    const result = await virsh.dumpxml(hv.domain);
    if (result.exitCode !== 0) {
      if (domainGone(result)) return undefined;
      throw virshFailed(result, `read the live XML of libvirt domain ${hv.domain}`);
    }
    const { running, disks } = parseDomainDisks(result.stdout);
    return running ? disks : undefined;
  }

  /** The domain's next device-removed event, waited for at most EVENT_WAIT_S (never past the deadline). */
  function watch(virsh: Virsh, domain: string, deadline: number): Promise<RemovalWatch> {
    const seconds = Math.max(1, Math.min(EVENT_WAIT_S, Math.ceil((deadline - Date.now()) / 1000)));
    return virsh.watchRemoved(domain, seconds);
  }
}
