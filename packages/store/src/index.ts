export { openSqliteStore, DEFAULT_BUSY_TIMEOUT_MS } from './open-sqlite-store.js';
export type { SqliteStoreOptions } from './open-sqlite-store.js';
export { createKyselyStore } from './kysely-store.js';
export type { KyselyStoreOptions } from './kysely-store.js';
export { createMigrations, createMigrationProvider } from './migrations.js';
export { migrateToLatest } from './migrate.js';
export { sqliteStoreDialect } from './sqlite-dialect.js';
export type { StoreDialect, ConstraintViolation } from './store-dialect.js';
export type * from './database.js';
