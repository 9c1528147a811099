export { createDatabaseOn, queryOn, startPostgresCluster, findPostgresBinDir } from './postgres-cluster.js';
export type { PostgresCluster, StartPostgresClusterOptions } from './postgres-cluster.js';
