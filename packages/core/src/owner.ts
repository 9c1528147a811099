/**
 * Whether the process named by an owner (`pid@host`, optionally followed by `/<token>`) may still
 * be running: true for this process (`self`), for a process on another host (only that host can
 * tell), and for a live process here; false for a dead one or an owner that names no process.
 */
export function ownerAlive(owner: string | null, hostname: string, self: string): boolean {
  if (owner === null) return false;
  const process_ = owner.split('/')[0] ?? owner;
  if (process_ === self) return true;
  const at = process_.indexOf('@');
  if (at < 0) return false;
  const pid = Number(process_.slice(0, at));
  const host = process_.slice(at + 1);
  // Another host's agent owns it: only that agent may recover it.
  if (host !== hostname) return true;
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
