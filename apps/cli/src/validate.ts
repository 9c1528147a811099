import { BerthError, MAX_VOLUME_BYTES, MIN_PRUNE_AGE_MS, zAge, zHypervisor, zId, zName, type HypervisorInput } from '@berth/core';
import { formatSize, parseSize } from '@berth/runtime/size';

/** An age from a flag (`30d`, `12h`, `2w`) in milliseconds; at least `MIN_PRUNE_AGE_MS` (an hour). */
export function pruneAge(text: string, flag = '--older-than'): number {
  const parsed = zAge.safeParse(text);
  if (!parsed.success) {
    throw new BerthError('VALIDATION', `${flag} ${text}: write an age like 30d, 12h, 2w or 90m`, {
      hint: 's, m, h, d and w are seconds, minutes, hours, days and weeks',
    });
  }
  if (parsed.data < MIN_PRUNE_AGE_MS) {
    throw new BerthError('VALIDATION', `${flag} ${text}: keep at least the last hour of operations`, {
      hint: 'a client may still be waiting on one that just ended, and a retry with its idempotency key must find it: use 1h or more',
    });
  }
  return parsed.data;
}

/** A volume size from a flag (`1GiB`, `512MiB`, `4096`), checked against what a volume may be. */
export function volumeSize(text: string, flag = '--size'): number {
  const trimmed = text.trim();
  if (trimmed.startsWith('-')) {
    throw new BerthError('VALIDATION', `${flag} ${text}: a size must be positive`, {
      hint: 'give a size such as 1GiB or 512MiB',
    });
  }
  const bytes = parseSize(trimmed);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new BerthError('VALIDATION', `${flag} ${text}: a size must be a positive whole number of bytes`, {
      hint: 'give a size such as 1GiB or 512MiB',
    });
  }
  if (bytes > MAX_VOLUME_BYTES) {
    throw new BerthError('VALIDATION', `${flag} ${text} is larger than the ${formatSize(MAX_VOLUME_BYTES)} a volume may have`, {
      hint: 'check the unit: sizes are bytes unless they end in KiB, MiB, GiB, TiB (or K, M, G, T)',
    });
  }
  if (bytes % 512 !== 0) {
    throw new BerthError('VALIDATION', `${flag} ${text} is ${bytes} bytes: a volume size must be a multiple of 512 bytes`, {
      hint: 'use binary units such as 512MiB or 1GiB',
    });
  }
  return bytes;
}

/** A name for a new volume or server: letters, digits, `.`, `_`, `-`; never a path. */
export function resourceName(text: string, what: 'volume' | 'server'): string {
  const result = zName.safeParse(text);
  if (result.success) return result.data;
  const reason = result.error.issues.map((issue) => issue.message).join('; ');
  throw new BerthError('VALIDATION', `invalid ${what} name "${text}": ${reason}`, {
    hint: `choose a name like ${what === 'volume' ? 'data1' : 'web-1'}`,
  });
}

/** A reference to an existing volume or server: its id or its name. */
export function resourceRef(text: string, what: 'volume' | 'server'): string {
  if (zId.safeParse(text).success || zName.safeParse(text).success) return text;
  throw new BerthError('VALIDATION', `"${text}" is neither a ${what} name nor a ${what} id`, {
    hint: `list them with \`berth ${what} list\``,
  });
}

/** An attachment or operation id (a UUID). */
export function resourceId(text: string, what: 'attachment' | 'operation'): string {
  if (zId.safeParse(text).success) return text;
  throw new BerthError('VALIDATION', `"${text}" is not an ${what} id`, {
    hint: `list them with \`berth ${what} list\``,
  });
}

/** A host name (as `hostname` prints it): letters, digits, `.`, `_`, `-`. */
export function hostName(text: string): string {
  const name = text.trim();
  if (/^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/.test(name)) return name;
  throw new BerthError('VALIDATION', `invalid host name "${text}"`, {
    hint: 'give the host name as `hostname` prints it, or leave --host out for this host',
  });
}

/** The `server create` flags that say what runs the server. */
export interface HypervisorFlags {
  hypervisor?: string | undefined;
  qmp?: string | undefined;
  bus?: string | undefined;
  domain?: string | undefined;
  uri?: string | undefined;
}

const HYPERVISOR_FLAGS: Record<Exclude<HypervisorInput['type'], 'host'>, ReadonlyArray<keyof HypervisorFlags>> = {
  qemu: ['qmp', 'bus'],
  libvirt: ['domain', 'uri'],
};

/**
 * A server's hypervisor from `--hypervisor` and its own flags, checked with core's `zHypervisor`:
 * a flag of another hypervisor (`--qmp` without `--hypervisor qemu`) is refused, not ignored.
 */
export function hypervisorFromFlags(flags: HypervisorFlags): HypervisorInput | undefined {
  const type = flags.hypervisor ?? 'host';
  const given = (['qmp', 'bus', 'domain', 'uri'] as const).filter((f) => flags[f] !== undefined);
  const allowed: ReadonlyArray<keyof HypervisorFlags> = type === 'qemu' || type === 'libvirt' ? HYPERVISOR_FLAGS[type] : [];
  const stray = given.filter((f) => !allowed.includes(f));
  if (stray.length > 0) {
    const owner = (f: keyof HypervisorFlags): string => (HYPERVISOR_FLAGS.qemu.includes(f) ? 'qemu' : 'libvirt');
    throw new BerthError('VALIDATION', `${stray.map((f) => `--${f}`).join(', ')} ${stray.length === 1 ? 'belongs' : 'belong'} to --hypervisor ${owner(stray[0] as keyof HypervisorFlags)}, not ${type}`, {
      hint: 'a QEMU guest: --hypervisor qemu --qmp /path/to/qmp.sock [--bus pci.0]; a libvirt domain: --hypervisor libvirt --domain NAME [--uri qemu:///system]',
    });
  }
  if (type === 'host') return undefined;
  const needed = type === 'qemu' ? 'qmp' : type === 'libvirt' ? 'domain' : undefined;
  if (needed !== undefined && flags[needed] === undefined) {
    throw new BerthError('VALIDATION', `--hypervisor ${type} needs --${needed}`, { hint: hypervisorHint(type) });
  }
  const candidate: Record<string, unknown> = { type, ...Object.fromEntries(given.map((f) => [f, flags[f]])) };
  const result = zHypervisor.safeParse(candidate);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const flag = issue?.path[0] === 'type' || issue?.path.length === 0 ? '--hypervisor' : `--${String(issue?.path[0])}`;
  throw new BerthError('VALIDATION', `${flag} ${flag === '--hypervisor' ? type : JSON.stringify(candidate[String(issue?.path[0])] ?? '')}: ${issue?.message ?? 'invalid'}`, {
    hint: hypervisorHint(type),
  });
}

function hypervisorHint(type: string): string {
  if (type === 'qemu') return 'give the QMP socket the guest\'s QEMU listens on: --hypervisor qemu --qmp /run/vm-2/qmp.sock [--bus pci.0]';
  if (type === 'libvirt') return 'give the libvirt domain: --hypervisor libvirt --domain web-1 [--uri qemu:///system]';
  return 'use --hypervisor host (the default), qemu or libvirt';
}
