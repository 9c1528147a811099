import { statSync, watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import { WaitTimeoutError } from './errors.js';
import { hostPathSegments } from './host-fs.js';
import type { DeviceWaiter, HostFs, WaitOptions } from './types.js';

/** The fallback poll interval of a wait, in ms: sysfs delivers no inotify events, so polling is a must. */
export const DEFAULT_POLL_MS = 50;

// setTimeout turns longer delays into 1 ms; a deadline past this is treated as none.
const MAX_TIMER_MS = 2_147_483_647;

const open = { watchers: 0, timers: 0 };

/** How many watchers and timers the device waiters hold right now (0 and 0 when no wait is running). */
export function deviceWaiterHandles(): { watchers: number; timers: number } {
  return { ...open };
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/** Waits on host paths through `fs`, waking on filesystem events, a poll, the deadline or the signal. */
export function createDeviceWaiter(fs: HostFs): DeviceWaiter {
  /** The real path of the deepest directory of `hostDir`'s ancestry (itself included) that exists. */
  function nearestExistingDir(hostDir: string): string {
    const segments = hostPathSegments(hostDir);
    for (;;) {
      const real = fs.resolve('/' + segments.join('/'));
      // A metadata read of sysfs, devtmpfs or tmpfs: synchronous, as in HostFs's rooted walk
      // (~4 µs against ~30 µs of CPU through libuv's pool); every probe of a wait re-arms here.
      try {
        if (statSync(real, { throwIfNoEntry: false })?.isDirectory() || segments.length === 0) return real;
      } catch {
        if (segments.length === 0) return real;
      }
      segments.pop();
    }
  }

  function waitFor<T>(watchHostDir: string, probe: () => Promise<T | undefined>, options: WaitOptions, what: string): Promise<T> {
    const { timeoutMs, signal } = options;
    const pollMs = options.pollMs ?? DEFAULT_POLL_MS;
    if (!(timeoutMs >= 0)) return Promise.reject(new RangeError(`timeoutMs must be a number >= 0, got ${timeoutMs}`));
    if (!(pollMs > 0)) return Promise.reject(new RangeError(`pollMs must be a number > 0, got ${pollMs}`));
    if (signal?.aborted) return Promise.reject(abortReason(signal));

    return new Promise<T>((resolvePromise, rejectPromise) => {
      let settled = false;
      let probing = false;
      let changed = false;
      let watcher: FSWatcher | undefined;
      let watchedDir: string | undefined;

      const deadline =
        timeoutMs <= MAX_TIMER_MS
          ? setTimeout(() => settle(() => rejectPromise(new WaitTimeoutError(what, timeoutMs))), timeoutMs)
          : undefined;
      if (deadline) open.timers++;
      const poll = setInterval(() => {
        if (!probing) void check();
      }, pollMs);
      open.timers++;
      const onAbort = (): void => settle(() => rejectPromise(abortReason(signal as AbortSignal)));
      signal?.addEventListener('abort', onAbort, { once: true });

      function closeWatcher(): void {
        if (!watcher) return;
        watcher.close();
        watcher = undefined;
        watchedDir = undefined;
        open.watchers--;
      }

      // Every exit goes through here, so no timer, watcher or listener outlives the wait.
      function settle(action: () => void): void {
        if (settled) return;
        settled = true;
        if (deadline) {
          clearTimeout(deadline);
          open.timers--;
        }
        clearInterval(poll);
        open.timers--;
        closeWatcher();
        signal?.removeEventListener('abort', onAbort);
        action();
      }

      // Watch the deepest existing directory on the way to the target, moving down as the
      // missing ones appear (and up if the watched one goes away).
      function arm(): void {
        for (;;) {
          const dir = nearestExistingDir(watchHostDir);
          if (settled || (watcher && dir === watchedDir)) return;
          closeWatcher();
          try {
            const w = watch(dir, { persistent: true }, onChange);
            w.on('error', () => {
              if (watcher === w) closeWatcher();
            });
            watcher = w;
            watchedDir = dir;
            open.watchers++;
          } catch {
            // No watch (gone again, or out of inotify watches): the poll still finds the change.
            return;
          }
          // Look once more now that the watch is live: a directory made between the look above
          // and the watch sent no event to anyone, so move down to it now.
        }
      }

      function onChange(): void {
        // A change during a probe may have come after the probe looked, so look again after it.
        if (probing) changed = true;
        else void check();
      }

      async function check(): Promise<void> {
        if (settled || probing) return;
        probing = true;
        try {
          do {
            changed = false;
            arm();
            if (settled) return;
            const value = await probe();
            if (settled) return;
            if (value !== undefined) {
              settle(() => resolvePromise(value));
              return;
            }
          } while (changed && !settled);
        } catch (error) {
          settle(() => rejectPromise(error));
        } finally {
          probing = false;
        }
      }

      void check();
    });
  }

  return {
    waitForPath(hostPath, options) {
      const probe = async (): Promise<true | undefined> => ((await fs.exists(hostPath)) ? true : undefined);
      return waitFor(path.posix.dirname(hostPath), probe, options, options.what ?? `${hostPath} to appear`).then(() => undefined);
    },

    waitForGone(hostPath, options) {
      const probe = async (): Promise<true | undefined> => ((await fs.exists(hostPath)) ? undefined : true);
      return waitFor(path.posix.dirname(hostPath), probe, options, options.what ?? `${hostPath} to disappear`).then(() => undefined);
    },

    waitUntil(watchHostDir, probe, options) {
      return waitFor(watchHostDir, probe, options, options.what ?? `a change under ${watchHostDir}`);
    },
  };
}
