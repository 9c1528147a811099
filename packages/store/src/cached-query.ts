import type { Compilable, CompiledQuery, Kysely, QueryResult } from 'kysely';
import type { Database } from './database.js';

/**
 * Stands for a parameter of a cached query while it is built: the compiled query holds the slot
 * where the value goes, and each run binds its own value there. Anything that reads the slot as a
 * value (a string, a number, JSON) throws: the builder must pass it to Kysely untouched.
 */
class Slot {
  constructor(readonly name: string) {}
  toString(): never {
    throw new Error(`cached query parameter ${this.name} used as a value while the query was built`);
  }
  valueOf(): never {
    return this.toString();
  }
  toJSON(): never {
    return this.toString();
  }
}

/** A compiled query whose parameters are slots (bound per run) or constants of the query's shape. */
interface Template {
  readonly compiled: CompiledQuery;
  readonly slots: ReadonlyArray<string | undefined>;
}

/** A query built and compiled once per engine, run with each call's parameters. */
export type CachedQuery<P, O> = (db: Kysely<Database>, params: P) => Promise<QueryResult<O>>;

/**
 * A query of one fixed shape, built with Kysely's builder and compiled once per engine (the
 * adapter of the `db` it first runs on), then run with each call's parameters bound in place —
 * Kysely otherwise builds and compiles the same SQL for every statement (most of that cost is in
 * code V8 has not optimised yet: a short-lived process, the first operations of a long-lived one).
 *
 * `build` gets stand-ins for the parameters (typed as `P`) and must only hand them to Kysely as
 * values (`where('id', '=', p.id)`); it must not read anything else that varies between calls
 * (a clock, a closure's arguments) — those would be compiled in once. Both are checked on the
 * first compile: every parameter must reach the SQL's parameters, and a second build must give
 * the same SQL and constants. Only for shapes that do not vary (no `IN` list of varying length).
 */
export function cachedQuery<P extends object, O>(
  names: ReadonlyArray<keyof P & string>,
  build: (db: Kysely<Database>, params: P) => Compilable<O>,
): CachedQuery<P, O> {
  const templates = new WeakMap<object, Template>();
  const compile = (db: Kysely<Database>): Template => {
    const stand = (): P => Object.fromEntries(names.map((name) => [name, new Slot(name)])) as unknown as P;
    const compiled = build(db, stand()).compile();
    const slots = compiled.parameters.map((value) => (value instanceof Slot ? value.name : undefined));
    const missing = names.filter((name) => !slots.includes(name));
    const again = build(db, stand()).compile();
    const same =
      again.sql === compiled.sql &&
      again.parameters.length === compiled.parameters.length &&
      again.parameters.every((value, i) => (value instanceof Slot ? value.name === slots[i] : slots[i] === undefined && Object.is(value, compiled.parameters[i])));
    if (missing.length > 0 || !same) {
      throw new Error(`cached query ${compiled.sql}: ${missing.length > 0 ? `parameters ${missing.join(', ')} not bound` : 'its shape varies between builds'}`);
    }
    return { compiled, slots };
  };
  return async (db, params) => {
    const adapter = db.getExecutor().adapter;
    let template = templates.get(adapter);
    if (template === undefined) {
      template = compile(db);
      templates.set(adapter, template);
    }
    const { compiled, slots } = template;
    const parameters = compiled.parameters.map((value, i) => {
      const slot = slots[i];
      return slot === undefined ? value : params[slot as keyof P];
    });
    return db.executeQuery<O>({ ...compiled, parameters });
  };
}

/**
 * Cached queries of a family whose shape varies a little between calls (which columns an UPDATE
 * sets, how many statuses a CAS accepts): one `cachedQuery` per shape, made on its first use.
 * `shape` must name everything the SQL depends on; the shapes a caller can make must be few.
 */
export function cachedQueryFamily<S, P extends object, O>(
  key: (shape: S) => string,
  make: (shape: S) => CachedQuery<P, O>,
): (shape: S) => CachedQuery<P, O> {
  const queries = new Map<string, CachedQuery<P, O>>();
  return (shape) => {
    const k = key(shape);
    let query = queries.get(k);
    if (query === undefined) queries.set(k, (query = make(shape)));
    return query;
  };
}

/** The parameters of a CAS update: the columns it sets, the row's id and the statuses it accepts (`from0`, `from1`, …). */
export type CasParams = Record<string, unknown>;

/** `CasParams` of setting `set` on row `id` when its status is one of `from`. */
export function casParams(set: object, id: string, from: readonly string[]): CasParams {
  const params: CasParams = { ...set, id };
  from.forEach((status, i) => {
    params[`from${i}`] = status;
  });
  return params;
}

/** The shape of a CAS update (see `casParams`): the columns it sets and how many statuses it accepts. */
export interface CasShape {
  readonly columns: readonly string[];
  readonly from: number;
}

/** A `CasShape`'s key and parameter names. */
export const casShape = {
  key: (shape: CasShape): string => `${shape.columns.join(',')}|${shape.from}`,
  names: (shape: CasShape): string[] => [...shape.columns, 'id', ...Array.from({ length: shape.from }, (_, i) => `from${i}`)],
};
