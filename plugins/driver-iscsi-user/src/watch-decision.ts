/** One connected LUN as the watcher sees it: its key and the portal its session uses now. */
export interface WatchedExport {
  key: string;
  portal: string;
}

/** What the watcher remembers of one LUN: the portal it watches and when that portal last answered. */
export interface WatchEntry {
  portal: string;
  /** When the portal last answered a ping, or when the watch of this LUN on this portal began, in ms. */
  lastAnswerMs: number;
}

/**
 * The watch after one round of pings at `nowMs`: each export's portal answered now, or keeps the
 * time it last did. A LUN seen for the first time, or on another portal (a failover), starts its
 * count at `nowMs`, as the kernel's count starts at the connection's loss; a LUN no longer listed
 * is forgotten.
 */
export function observePings(
  previous: ReadonlyMap<string, WatchEntry>,
  exports: readonly WatchedExport[],
  answered: (portal: string) => boolean,
  nowMs: number,
): Map<string, WatchEntry> {
  const next = new Map<string, WatchEntry>();
  for (const { key, portal } of exports) {
    const before = previous.get(key);
    const since = before !== undefined && before.portal === portal ? before.lastAnswerMs : nowMs;
    next.set(key, { portal, lastAnswerMs: answered(portal) ? nowMs : since });
  }
  return next;
}

/** The LUNs whose portal has been silent for longer than `replacementTimeoutMs` at `nowMs`: their I/O is to be failed. */
export function overdueExports(watch: ReadonlyMap<string, WatchEntry>, nowMs: number, replacementTimeoutMs: number): string[] {
  return [...watch].filter(([, entry]) => nowMs - entry.lastAnswerMs > replacementTimeoutMs).map(([key]) => key);
}

/**
 * Which overdue LUNs to fail now. Failing one aborts its FUSE connection, and qemu 7.2 then takes
 * the whole qemu-storage-daemon down (or spins in it), so every other LUN it serves sees EIO until
 * it is rebuilt, and one held open (a mounted file system) cannot be rebuilt at all: a LUN whose
 * target answers must never pay for one whose target is dead. So the overdue LUNs are failed only
 * when they are every LUN the daemon serves (one tgtd serving them all died: the common case);
 * otherwise none is, and their I/O keeps waiting for the target, as before the watch.
 */
export function exportsToFail(overdue: readonly string[], served: readonly string[]): { fail: string[]; spared: number } {
  const dead = new Set(overdue);
  const healthy = served.filter((key) => !dead.has(key)).length;
  return healthy === 0 ? { fail: [...overdue], spared: 0 } : { fail: [], spared: healthy };
}
