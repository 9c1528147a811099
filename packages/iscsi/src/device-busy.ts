import { BerthError, toBerthError } from '@berth/core';
import { lastingHolderOf, type HeldDevice, type HostServices } from '@berth/host';

/** A disconnect refused because something holds one of its devices: it stays attached and usable. */
export function busyError(device: string, holder: string): BerthError {
  return new BerthError('CONFLICT', `${device} is busy: ${holder}; not detaching it`, {
    hint: `close what holds ${device} (fuser -v ${device}, lsof ${device}, umount), then detach again; it stays attached and usable meanwhile`,
    details: { device, reason: 'busy', untouched: true },
  });
}

/**
 * Refuse a disconnect (before it changes anything) while something holds one of `devices`: a
 * device stacked on it (other than `ignoreStacked`, the map the disconnect flushes itself), a
 * mount of it, a process with it open — `@berth/host`'s check, as the loop transport's. A holder
 * that lets go within `graceMs` (one grace for all of them) is a passer-by. Throws `busyError`
 * (`CONFLICT`, `reason: 'busy'`, `untouched`) naming the holder; the wait follows `signal` (cut
 * short, its error says `untouched` too).
 */
export async function refuseIfHeld(
  host: Pick<HostServices, 'fs' | 'runner' | 'waiter'>,
  devices: readonly HeldDevice[],
  options: { graceMs: number; timeoutMs: number; signal?: AbortSignal | undefined; ignoreStacked?: readonly string[] },
): Promise<void> {
  const deadline = Date.now() + options.graceMs;
  for (const device of devices) {
    let holder: string | undefined;
    try {
      holder = await lastingHolderOf(host, device, {
        timeoutMs: options.timeoutMs,
        graceMs: Math.max(0, deadline - Date.now()),
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.ignoreStacked ? { ignoreStacked: options.ignoreStacked } : {}),
      });
    } catch (error) {
      // Cut short (the deadline, a cancel) while it waited: nothing was changed yet.
      const base = toBerthError(error, 'DRIVER_ERROR');
      throw new BerthError(base.code, base.message, { cause: error, ...(base.hint === undefined ? {} : { hint: base.hint }), details: { ...base.details, untouched: true } });
    }
    if (holder !== undefined) throw busyError(device.node, holder);
  }
}
