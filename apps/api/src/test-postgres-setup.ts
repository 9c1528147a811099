// vitest global setup of the `postgres` project: one throwaway PostgreSQL cluster for the run,
// whose URL the workers get through `inject('berthTestPostgres')`; `createTestApi` then opens
// every test's berth on a fresh database of it instead of SQLite. Stopped when the run ends.
import { startPostgresCluster } from '@berth/store/testing';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The URL of the run's PostgreSQL cluster (the `postgres` project only). */
    berthTestPostgres: string;
  }
}

/** Start the cluster; the returned teardown stops it and removes its directory. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const cluster = await startPostgresCluster();
  project.provide('berthTestPostgres', cluster.url());
  return () => cluster.stop();
}
