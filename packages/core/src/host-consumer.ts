import type { HostFs } from '@berth/host';
import type { Consumer, Publication, UnpublishOptions, UnpublishOrphanOptions } from './contracts/consumer.js';
import type { Device } from './connection.js';
import type { Attachment, Server } from './model.js';
import { BerthError } from './errors.js';
import { definePlugin, PLUGIN_API_VERSION } from './plugin.js';

/** Where the host consumer puts its stable links. */
export const STABLE_LINK_DIR = '/dev/berth';

// The names berth gives its links: volume and attachment ids (UUIDs).
const BERTH_LINK_NAME = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The stable path of a volume's device on its host (while any attachment of it there is published). */
export function stableLinkPath(volumeId: string): string {
  return `${STABLE_LINK_DIR}/${volumeId}`;
}

/** The stable path of one attachment's device: its own, never shared with another attachment. */
export function attachmentLinkPath(attachmentId: string): string {
  return `${STABLE_LINK_DIR}/${attachmentId}`;
}

/** Where an attachment's two host links lead now (`undefined`: absent): `failUnreachedPublish`'s `before`. */
export interface AttachmentLinks {
  own: string | undefined;
  volume: string | undefined;
}

/** Read where `attachment`'s links lead (a guest consumer, before it publishes). */
export async function attachmentLinks(fs: HostFs, attachment: Pick<Attachment, 'id' | 'volumeId'>): Promise<AttachmentLinks> {
  return { own: await fs.readlink(attachmentLinkPath(attachment.id)), volume: await fs.readlink(stableLinkPath(attachment.volumeId)) };
}

/**
 * What a guest consumer's publish does when it never reached the guest (`error.details.untouched`:
 * no QMP session, libvirt not reached, the domain not running): when the attachment's own link was
 * not there before, nothing of it was ever published — the links this call made, or re-pointed at
 * `device` from elsewhere (a stale name), go and the error is thrown as it is, so the attach's
 * rollback does not ask the unreachable guest again. With the own link there before, an earlier
 * publish of this attachment (a re-run after a crash) may have plugged the disk: the links stay
 * and the error loses `untouched`, so the undo runs. Any other error is thrown as it is.
 */
export async function failUnreachedPublish(
  fs: HostFs,
  attachment: Pick<Attachment, 'id' | 'volumeId'>,
  device: Pick<Device, 'path'>,
  before: AttachmentLinks,
  error: unknown,
): Promise<never> {
  if (!BerthError.is(error) || error.details.untouched !== true) throw error;
  if (before.own !== undefined) {
    const { untouched: _untouched, ...details } = error.details;
    throw new BerthError(error.code, error.message, { ...(error.hint === undefined ? {} : { hint: error.hint }), details, cause: error });
  }
  await fs.unlink(attachmentLinkPath(attachment.id));
  // Another attachment of the volume on this host shares its device, and this name with it: kept.
  const volume = stableLinkPath(attachment.volumeId);
  if (before.volume !== device.path && (await fs.readlink(volume)) === device.path) await fs.unlink(volume);
  throw error;
}

/**
 * The default consumer: the server is this host itself, so publishing means giving the device
 * names that do not change across attaches (`/dev/loop3` today, `/dev/loop7` tomorrow):
 * `/dev/berth/<attachment-id>` (the attachment's own, its `publishedPath`) and
 * `/dev/berth/<volume-id>`. The second cannot collide: the attachments of one volume on one host
 * share one device, so every attachment points it at the same device; it goes with the last of them.
 */
export function createHostConsumer(fs: HostFs): Consumer & Required<Pick<Consumer, 'unpublishOrphan' | 'checkPublication'>> {
  return {
    name: 'host',
    async publish(_server: Server, device: Device, attachment: Attachment): Promise<Publication> {
      const own = attachmentLinkPath(attachment.id);
      await fs.mkdir(STABLE_LINK_DIR, { mode: 0o755 });
      // `device.path` is the machine's (core resolves a transport's other host root before a
      // consumer is called), so the stable link opens the same device whoever follows it.
      await fs.symlink(device.path, own);
      await fs.symlink(device.path, stableLinkPath(attachment.volumeId));
      return { path: own };
    },
    async unpublish(_server: Server, attachment: Attachment, options: UnpublishOptions = {}): Promise<void> {
      // The attachment's own link names nothing else: it goes whatever it points at.
      await fs.unlink(attachmentLinkPath(attachment.id));
      if (options.stillShared === true) return;
      const link = stableLinkPath(attachment.volumeId);
      const target = await fs.readlink(link);
      const device = attachment.device;
      // Nobody else on this host uses the volume: its link goes, unless it was re-pointed at
      // another device since (an attach that published after this attachment's device was lost).
      if (target !== undefined && (device === null || target === device.path)) {
        await fs.unlink(link);
      }
    },
    async unpublishOrphan(volumeId: string, device: Device, options: UnpublishOrphanOptions = {}): Promise<void> {
      const target = device.path;
      const keep = new Set(options.keep ?? []);
      const link = stableLinkPath(volumeId);
      if (!keep.has(volumeId) && (await fs.readlink(link)) === target) await fs.unlink(link);
      // The attachment's own link is named by an id no record holds any more (the row was lost):
      // a berth name leading to this device that no live record holds (`keep`) is one of those.
      // A live record's name leading there is another attachment's: the kernel gave the device's
      // name to its disk. Links leading anywhere else stay.
      for (const name of await fs.readdir(STABLE_LINK_DIR)) {
        if (!BERTH_LINK_NAME.test(name) || keep.has(name)) continue;
        const path = `${STABLE_LINK_DIR}/${name}`;
        if ((await fs.readlink(path)) === target) await fs.unlink(path);
      }
    },
    async checkPublication(_server: Server, attachment: Attachment): Promise<string | undefined> {
      const device = attachment.device;
      if (device === null) return undefined;
      const problems: string[] = [];
      for (const link of [attachmentLinkPath(attachment.id), stableLinkPath(attachment.volumeId)]) {
        const target = await fs.readlink(link);
        if (target === undefined) problems.push(`${link} is missing`);
        else if (target !== device.path) problems.push(`${link} leads to ${target}, not ${device.path}`);
      }
      return problems.length === 0 ? undefined : problems.join('; ');
    },
    async check() {
      return { ok: true, summary: `stable links under ${fs.resolve(STABLE_LINK_DIR)}` };
    },
  };
}

/** Core's own plugin: registers the `host` consumer. */
export const corePlugin = definePlugin({
  name: '@berth/core',
  apiVersion: PLUGIN_API_VERSION,
  register(registry) {
    registry.consumer('host', (context) => createHostConsumer(context.host.fs));
  },
});
