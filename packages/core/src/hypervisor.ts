import { realpath } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { lazySchema } from './lazy-schema.js';

// The server record's `hypervisor` field. Core owns these schemas (it stores and validates them,
// and picks the consumer from `type`); the guest consumer plugins parse the same schemas, so a
// server created by the CLI or the API is exactly what the plugin reads. Core never imports a plugin.

/** The server is this host itself: the volume is published on the host (`/dev/berth/<id>`). */
export const zHostHypervisor = lazySchema(() => z.strictObject({
  type: z.literal('host'),
}));

/** The QEMU bus hot-plugged disks go on when a server names none (the `pc` machine's). */
export const DEFAULT_QEMU_BUS = 'pci.0';

/** A plain QEMU reached over its QMP socket (`berth server create vm-2 --hypervisor qemu --qmp PATH`). */
export const zQemuHypervisor = lazySchema(() => z.strictObject({
  type: z.literal('qemu'),
  /** The QMP socket of the guest's QEMU (`-qmp unix:PATH,server=on,wait=off`). */
  qmp: z.string().max(4096).startsWith('/', 'the QMP socket is an absolute path').refine((p) => !p.includes('\0'), 'must not contain NUL'),
  /** The PCI bus hot-plugged disks go on: `pci.0` on the `pc` machine (q35 needs a root port). */
  bus: z.string().max(64).regex(/^[A-Za-z][A-Za-z0-9_.-]*$/, 'a QEMU bus id: letters, digits, ".", "_", "-"').default(DEFAULT_QEMU_BUS),
}));
/** A server's QEMU settings. */
export type QemuHypervisor = z.output<typeof zQemuHypervisor>;

/** The libvirt connection used when a server names none. */
export const DEFAULT_LIBVIRT_URI = 'qemu:///system';

/** A libvirt domain (`berth server create web-1 --hypervisor libvirt --domain web-1 [--uri U]`). */
export const zLibvirtHypervisor = lazySchema(() => z.strictObject({
  type: z.literal('libvirt'),
  /** The domain's name or UUID. */
  domain: z.string().min(1).max(200).regex(/^[^/\s-][^/]*$/, 'a domain name has no slash and does not start with a space or "-"'),
  /** The libvirt connection URI, a local one (`qemu:///system`, `qemu:///session`: `LIBVIRT_URI`). */
  // Stored records are read with this loose form; a new server's URI is held to `LIBVIRT_URI`.
  uri: z.string().min(1).max(1024).regex(/^[a-z][a-z0-9+.-]*:\/\/\S*$/, 'a libvirt URI like qemu:///system').default(DEFAULT_LIBVIRT_URI),
}));
/**
 * What a new server's libvirt URI must be: a local one, `DRIVER:///PATH` or `DRIVER+unix:///PATH`
 * (`qemu:///system`, `qemu:///session`), with no host and no query. berth publishes a device of
 * the host it runs on into the guest, so the guest runs here; and libvirt's other URIs run or
 * reach what their parameters name, as root here — `qemu+ext:///system?command=PROG` runs PROG,
 * `?socket=`, `?keyfile=` and `+ssh` reach files and sockets — which a member token must not
 * choose (a security review ran a program as root through one). Checked when a server is created
 * (`zNewHypervisor`); the libvirt consumer checks a stored one before it connects
 * (`isUsableLibvirtUri`: an older record without a query or `ext` still works, so its volumes can
 * be detached).
 */
export const LIBVIRT_URI = /^[a-z][a-z0-9]*(\+unix)?:\/\/\/[a-z]+\/?$/;

/** Whether `uri` is a local libvirt URI a server may name (`LIBVIRT_URI`). */
export function isLocalLibvirtUri(uri: string): boolean {
  return LIBVIRT_URI.test(uri);
}

/**
 * Whether the libvirt consumer may connect through a stored server's `uri`: a local one, or one
 * an older berth accepted at create that runs nothing and reads nothing it names — no query
 * (`?command=`, `?netcat=`, `?socket=`, `?keyfile=` …), not the `ext` transport, no host or user
 * starting with `-` (an ssh option), no `%`-escape (which libvirt decodes). Such a record
 * (`qemu+ssh://h/system`) keeps working, so its volumes can still be detached; a new server cannot
 * name one (`LIBVIRT_URI`).
 */
export function isUsableLibvirtUri(uri: string): boolean {
  if (LIBVIRT_URI.test(uri)) return true;
  // No `%`: libvirt decodes the host and user, and `%2D` would be the `-` refused below.
  const m = /^[a-z][a-z0-9]*(?:\+([a-z0-9]+))?:\/\/([A-Za-z0-9._~@:[\]-]*)(\/[A-Za-z0-9._~/-]*)?$/.exec(uri);
  if (!m) return false;
  const [, transport, authority = ''] = m;
  return transport !== 'ext' && !/(^|@)-/.test(authority);
}

/**
 * Paths a new server's QMP socket may not be spelled through: `/proc/<pid>/root/…` or `/proc/self/cwd/…`
 * reach any socket under another spelling (one guest would be two servers), `/dev/fd` and `/sys`
 * hold no QMP socket.
 */
const QMP_PATH_REFUSED = /^\/(proc|dev\/fd|sys)(\/|$)/;

/** A server's libvirt settings. */
export type LibvirtHypervisor = z.output<typeof zLibvirtHypervisor>;

/** What runs a server, and so which consumer publishes its volumes: `host`, `qemu` or `libvirt`. */
export const zHypervisor = lazySchema(() => z.discriminatedUnion('type', [zHostHypervisor, zQemuHypervisor, zLibvirtHypervisor]));
/** A server's hypervisor. */
export type Hypervisor = z.output<typeof zHypervisor>;

/** A new server's hypervisor: as `zHypervisor`, with a libvirt URI held to `LIBVIRT_URI`. */
export const zNewHypervisor = lazySchema(() =>
  z.discriminatedUnion('type', [
    zHostHypervisor,
    zQemuHypervisor.unwrap().extend({
      qmp: zQemuHypervisor
        .unwrap()
        .shape.qmp.refine((p) => !QMP_PATH_REFUSED.test(path.posix.normalize(p)), 'the QMP socket is a path of the guest\'s own directory, not one under /proc, /dev/fd or /sys'),
    }),
    zLibvirtHypervisor.unwrap().extend({
      uri: z
        .string()
        .min(1)
        .max(1024)
        .regex(
          LIBVIRT_URI,
          'a local libvirt URI like qemu:///system or qemu:///session (the guest runs on the server\'s host; no remote transport, host or query such as ?command= or ?socket=)',
        )
        .default(DEFAULT_LIBVIRT_URI),
    }),
  ]),
);
/** A hypervisor as a request gives it (`bus` and `uri` may be left to their defaults). */
export type HypervisorInput = z.input<typeof zHypervisor>;
/** The hypervisor kinds (`hypervisor.type`). */
export const HYPERVISOR_TYPES = ['host', 'qemu', 'libvirt'] as const;

/**
 * The consumer that publishes a server's volumes: the one named by its hypervisor (`qemu`,
 * `libvirt`), else the configured default (`config.consumer`, `host` unless changed).
 */
export function consumerNameFor(server: { hypervisor?: Hypervisor | undefined }, defaultConsumer: string): string {
  const type = server.hypervisor?.type;
  return type === undefined || type === 'host' ? defaultConsumer : type;
}

/**
 * Which guest a server's hypervisor reaches, on its host: two servers with the same key are one
 * guest (the same QMP socket; the same libvirt connection and domain). `undefined` for the host.
 * By spelling, tidied: a socket reached through another symlink, or a domain named once by name
 * and once by UUID, is not recognised here (core cannot look on another host; on this one,
 * `localGuestKey` resolves a QMP socket's symlinks).
 * berth refuses a second server for a guest one already names (its attachments would take each
 * other's disks out of the guest), and reconcile reads them as one guest.
 */
export function guestKey(hypervisor: Hypervisor | undefined): string | undefined {
  if (hypervisor === undefined || hypervisor.type === 'host') return undefined;
  // `/var/run` is `/run` on every Linux berth runs on (a symlink since 2011's systemd hosts).
  if (hypervisor.type === 'qemu') return `qemu ${path.posix.normalize(hypervisor.qmp).replace(/^\/var\/run\//, '/run/')}`;
  // `qemu+unix:///system` is the local `qemu:///system` spelled with its transport.
  return `libvirt ${hypervisor.uri.replace(/^([a-z][a-z0-9.-]*)\+unix:\/\/\//, '$1:///').replace(/\/+$/, '')} ${hypervisor.domain}`;
}

/**
 * `guestKey` for a server of **this** host, with a QMP socket's symlinks resolved (`realpath` of
 * the socket, else of its directory): `/tmp/link.sock` → the guest's own socket is one guest. A
 * fault explorer made a second server through a symlink, attached to it, and reconcile then
 * unplugged that disk as "no attachment of the first server accounts for it" — and plugged it
 * back at the next run, for ever. A path that cannot be resolved keeps its spelling.
 */
export async function localGuestKey(hypervisor: Hypervisor | undefined): Promise<string | undefined> {
  if (hypervisor?.type !== 'qemu') return guestKey(hypervisor);
  const spelled = path.posix.normalize(hypervisor.qmp);
  const real = await realpath(spelled).catch(async () => {
    const dir = await realpath(path.posix.dirname(spelled)).catch(() => undefined);
    return dir === undefined ? spelled : path.posix.join(dir, path.posix.basename(spelled));
  });
  return guestKey({ ...hypervisor, qmp: real });
}

/** The plugin package that registers each guest consumer (for the hint of a missing one). */
export const GUEST_CONSUMER_PACKAGES: Readonly<Record<string, string>> = {
  qemu: '@berth/consumer-qemu',
  libvirt: '@berth/consumer-libvirt',
};
