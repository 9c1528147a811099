import { commandsOutlive, processAliveSync, processStartTicksSync } from '@berth/host';

/**
 * What is left of the process an owner (`pid@host`, or `pid@host#<start time>` as berth writes it
 * since 2026-12-06, optionally followed by `/<token>`) names:
 * `alive` for this process (`self`), for a process on another host (only that host can tell), and
 * for a live process here; `commands` for a dead process here whose commands still run (its
 * berth-spawner stays until they ended: `commandsOutlive`); `dead` for a dead one, or an owner that
 * names no process.
 */
export function ownerState(owner: string | null, hostname: string, self: string): { state: 'alive' | 'dead' } | { state: 'commands'; pid: number } {
  if (owner === null) return { state: 'dead' };
  const process_ = owner.split('/')[0] ?? owner;
  if (process_ === self) return { state: 'alive' };
  const at = process_.indexOf('@');
  if (at < 0) return { state: 'dead' };
  const pid = Number(process_.slice(0, at));
  const [host, ticks] = process_.slice(at + 1).split('#');
  // Another host's agent owns it: only that agent may recover it.
  if (host !== hostname) return { state: 'alive' };
  if (!Number.isInteger(pid) || pid <= 0) return { state: 'dead' };
  // A zombie is dead (`kill(pid, 0)` alone would call one whose parent never reaps it alive for
  // good: its operations never recovered, its leases held until they expire).
  // A start time named: only the process started then is it (a pid the kernel gave again is not).
  const now = processStartTicksSync(pid);
  const runs = now !== undefined ? ticks === undefined || ticks === '' || now === ticks : processAliveSync(pid);
  if (runs) return { state: 'alive' };
  return commandsOutlive(pid, ticks) ? { state: 'commands', pid } : { state: 'dead' };
}

/** The host an owner (`pid@host#ticks/token`) names, or undefined for one that names none. */
export function ownerHost(owner: string | null): string | undefined {
  if (owner === null) return undefined;
  const process_ = owner.split('/')[0] ?? owner;
  const at = process_.indexOf('@');
  return at < 0 ? undefined : process_.slice(at + 1).split('#')[0];
}

/**
 * Whether the process named by an owner may still be acting: it runs (`ownerState` `alive`), or
 * the commands it started do (`commands`: a SIGKILLed berth's `losetup` or `iscsiadm` that has not
 * ended). False only for a dead owner whose commands ended, or an owner that names no process.
 */
export function ownerAlive(owner: string | null, hostname: string, self: string): boolean {
  return ownerState(owner, hostname, self).state !== 'dead';
}

const ORPHAN_POLL_FIRST_MS = 5;
const ORPHAN_POLL_MAX_MS = 100;

/** Beyond the command timeout, how long to wait for a dead owner's commands: the 2 s from SIGTERM to SIGKILL, with room. */
export const DEAD_OWNER_KILL_MARGIN_MS = 3_000;

/**
 * Wait until the commands dead process `pid` (any dead process's, when undefined) left running have
 * ended (`commandsOutlive`), at most `timeoutMs`; false when they still run then. A poll: they are no children of this process, and
 * Node 20 has no pidfd to wait on.
 */
export async function commandsEnded(pid: number | undefined, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let wait = ORPHAN_POLL_FIRST_MS;
  while (commandsOutlive(pid)) {
    const left = deadline - Date.now();
    if (left <= 0 || signal?.aborted) return false;
    await new Promise((resolve) => setTimeout(resolve, Math.min(wait, left)));
    wait = Math.min(wait * 2, ORPHAN_POLL_MAX_MS);
  }
  return true;
}
