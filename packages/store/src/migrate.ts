import { BerthError } from '@berth/core';
import { Migrator } from 'kysely';
import type { Kysely } from 'kysely';
import type { Database } from './database.js';
import { createMigrationProvider } from './migrations.js';
import type { StoreDialect } from './store-dialect.js';

/** Bring the schema to the latest migration; returns the names of the migrations it applied. */
export async function migrateToLatest(db: Kysely<Database>, dialect: StoreDialect, where: string): Promise<string[]> {
  const migrator = new Migrator({ db, provider: createMigrationProvider(dialect) });
  const { error, results } = await migrator.migrateToLatest();
  if (error !== undefined) {
    // The engine could not be reached or refused us: that error already names the database.
    if (BerthError.is(error) && (error.code === 'UNAVAILABLE' || error.code === 'CONFIG')) throw error;
    const failed = results?.find((result) => result.status === 'Error')?.migrationName;
    const message = error instanceof Error ? error.message : String(error);
    throw new BerthError(
      BerthError.is(error) ? error.code : 'CONFIG',
      `cannot migrate the berth database ${where}${failed === undefined ? '' : ` (migration ${failed})`}: ${message}`,
      {
        hint: /missing/.test(message)
          ? 'the database was written by a newer berth; upgrade berth or point it at another data directory or store'
          : BerthError.is(error) && error.hint !== undefined
            ? error.hint
            : 'check that it is a berth database and that this user may write it',
        ...(BerthError.is(error) ? { details: error.details } : {}),
        cause: error,
      },
    );
  }
  return (results ?? []).filter((result) => result.status === 'Success').map((result) => result.migrationName);
}
