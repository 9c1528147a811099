import { virtioDiskName, type Attachment } from '@berth/core';

/** One row of `virsh domblklist --details`. */
export interface DomainBlock {
  type: string;
  device: string;
  target: string;
  /** The source path, or `undefined` for an empty drive (`-`). */
  source: string | undefined;
}

/** The disk a volume becomes in a libvirt domain. */
export interface LibvirtDiskSpec {
  /** The host block device the guest's disk reads (berth's stable link). */
  source: string;
  /** The target name (`vdb`): libvirt requires one; the guest still names the disk itself. */
  target: string;
  /** `<serial>`: the volume id (a virtio guest sees its first 20 characters). */
  serial: string;
  /** The user alias (`ua-berth-<volume id>`): finds the disk again in the live XML. */
  alias: string;
  readOnly: boolean;
  /** `none` (O_DIRECT, the default) or `writeback` when the backend says caching is safe. */
  cache: 'none' | 'writeback';
  /** Pass the guest's discards down to the device. */
  discard: boolean;
}

/** The alias berth gives a volume's disk (libvirt's user aliases start with `ua-`). */
export function diskAlias(volumeId: string): string {
  return `ua-berth-${volumeId}`;
}

/**
 * Cache and discard for an attachment, from its connection_info, as Nova does: `cache='none'`
 * unless the backend marks the volume `cacheable`; `discard='unmap'` when it says `discard: true`;
 * read-only for `ro` attachments (or `access_mode: ro`).
 */
export function diskModeOf(attachment: Attachment): Pick<LibvirtDiskSpec, 'readOnly' | 'cache' | 'discard'> {
  const data: Record<string, unknown> = attachment.connectionInfo?.data ?? {};
  return {
    readOnly: attachment.mode === 'ro' || data.access_mode === 'ro',
    cache: data.cacheable === true ? 'writeback' : 'none',
    discard: data.discard === true,
  };
}

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

/** The `<disk type='block'>` XML for `attach-device` / `detach-device`. */
export function diskXml(spec: LibvirtDiskSpec): string {
  // io='native' needs O_DIRECT, so only with cache='none'; otherwise QEMU's thread pool does the I/O.
  const driver = [`name='qemu'`, `type='raw'`, `cache='${spec.cache}'`, ...(spec.cache === 'none' ? [`io='native'`] : []), ...(spec.discard ? [`discard='unmap'`] : [])];
  return [
    `<disk type='block' device='disk'>`,
    `  <driver ${driver.join(' ')}/>`,
    `  <source dev='${escape(spec.source)}'/>`,
    `  <target dev='${escape(spec.target)}' bus='virtio'/>`,
    `  <serial>${escape(spec.serial)}</serial>`,
    ...(spec.readOnly ? ['  <readonly/>'] : []),
    `  <alias name='${escape(spec.alias)}'/>`,
    `</disk>`,
    '',
  ].join('\n');
}

/** The first `vdX` target not in `taken` (`vda`, ..., `vdz`, `vdaa`, ...). */
export function freeVirtioTarget(taken: readonly string[]): string {
  for (let index = 0; ; index++) {
    const target = virtioDiskName(index).slice('/dev/'.length);
    if (!taken.includes(target)) return target;
  }
}

/** One `<disk>` of a live domain XML (`virsh dumpxml`). */
export interface LiveDisk {
  /** `<serial>` (empty when the disk has none). */
  serial: string;
  /** The device alias libvirt gave it, or the user's (`ua-...`); unplugged by it. */
  alias: string | undefined;
  /** `<target dev>` (`vdb`). */
  target: string | undefined;
}

function unescape(text: string): string {
  return text
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&apos;/g, "'")
    .replace(/&quot;/g, '"')
    .replace(/&amp;/g, '&');
}

/** Each `<disk ...>...</disk>` of a domain XML: its attributes text and its body. */
function diskElements(xml: string): Array<{ attributes: string; body: string }> {
  return [...xml.matchAll(/<disk\b([^>]*)>([\s\S]*?)<\/disk>/g)].map(([, attributes = '', body = '']) => ({ attributes, body }));
}

/**
 * The disks of a domain XML, and whether it is the XML of a running domain (libvirt gives a live
 * domain an `id` attribute; a defined one that is shut off has none). libvirt writes this XML
 * itself (attribute values in single quotes, one element per disk), so a focused reader is enough.
 */
export function parseDomainDisks(xml: string): { running: boolean; disks: LiveDisk[] } {
  const root = /<domain\b[^>]*>/.exec(xml)?.[0] ?? '';
  const running = /\bid=['"]-?\d+['"]/.test(root) && !/\bid=['"]-1['"]/.test(root);
  const disks: LiveDisk[] = [];
  for (const { body } of diskElements(xml)) {
    const serial = /<serial>([^<]*)<\/serial>/.exec(body)?.[1];
    const alias = /<alias\s+name=['"]([^'"]+)['"]/.exec(body)?.[1];
    const target = /<target\s+dev=['"]([^'"]+)['"]/.exec(body)?.[1];
    disks.push({ serial: serial === undefined ? '' : unescape(serial), alias: alias && unescape(alias), target: target && unescape(target) });
  }
  return { running, disks };
}

/**
 * The disks of a domain XML as `virsh domblklist --details` lists them (type, device, target,
 * source: `<source dev|file|name>`, `undefined` for an empty drive), for the RPC path that reads
 * the XML itself instead of running virsh.
 */
export function parseDomainBlocks(xml: string): DomainBlock[] {
  const blocks: DomainBlock[] = [];
  for (const { attributes: open, body } of diskElements(xml)) {
    const attr = (text: string, name: string) => new RegExp(`\\b${name}=['"]([^'"]*)['"]`).exec(text)?.[1];
    const sourceTag = /<source\b[^>]*>/.exec(body)?.[0];
    const source = sourceTag === undefined ? undefined : (attr(sourceTag, 'dev') ?? attr(sourceTag, 'file') ?? attr(sourceTag, 'name'));
    const target = /<target\b[^>]*>/.exec(body)?.[0];
    const dev = target === undefined ? undefined : attr(target, 'dev');
    if (dev === undefined) continue;
    blocks.push({ type: attr(open, 'type') ?? '-', device: attr(open, 'device') ?? 'disk', target: unescape(dev), source: source === undefined ? undefined : unescape(source) });
  }
  return blocks;
}
