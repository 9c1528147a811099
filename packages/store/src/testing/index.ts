export { createDatabaseOn, queryOn, startPostgresCluster, findPostgresBinDir } from './postgres-cluster.js';
export type { PostgresCluster, StartPostgresClusterOptions } from './postgres-cluster.js';
export { sqliteCommits, tapSqliteStatements, WAL_SYNC_MARK } from './statement-tap.js';
export type { TappedCommit, TappedStatement } from './statement-tap.js';
