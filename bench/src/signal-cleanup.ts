// A benchmark stopped by a signal (Ctrl-C, `timeout`) never reaches its `finally`: what it started
// that outlives the process (a PostgreSQL cluster, temp dirs) is registered here and removed by
// `run.ts`'s SIGINT/SIGTERM handler before it exits.
const cleanups = new Set<() => Promise<void>>();

/** Run `cleanup` if the process is stopped by a signal; the returned function unregisters it. */
export function onSignalCleanup(cleanup: () => Promise<void>): () => void {
  cleanups.add(cleanup);
  return () => cleanups.delete(cleanup);
}

/** Install the handlers: run every registered cleanup (each at most once), then exit 128 + signal. */
export function installSignalCleanup(): void {
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.once(signal, () => {
      console.error(`bench: ${signal}: cleaning up what was started`);
      const pending = [...cleanups];
      cleanups.clear();
      void Promise.allSettled(pending.map((c) => c())).then(() => process.exit(code));
    });
  }
}
