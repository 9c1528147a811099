import { z } from 'zod';
import { lazySchema } from './lazy-schema.js';
import { BerthError } from './errors.js';
import { parseFaultSpec } from './faults.js';

/** A host name as RFC 1123 allows it (labels of letters, digits and inner hyphens). */
export const zHostName = lazySchema(() => z
  .string()
  .max(253)
  .regex(/^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/, 'must be a host name (RFC 1123)'));

/** A plugin named in the config: its package, and options passed to its factories. */
export const zPluginEntry = lazySchema(() => z.union([
  z.string().min(1),
  z.strictObject({ package: z.string().min(1), options: z.record(z.string(), z.unknown()).optional() }),
]));

/** berth's configuration (file + environment); every field has a default. */
/** How much longer than one long-poll an agent may be silent before it is called offline. */
const AGENT_SILENCE_MARGIN_MS = 10_000;

export const zConfig = lazySchema(() => z.strictObject({
  /** Database, volume files and run state. */
  dataDir: z.string().min(1),
  /** Root that host paths (/sys, /dev, /etc/iscsi) resolve under; `/` in production. */
  hostRoot: z.string().min(1).default('/'),
  /** Directories put first on PATH for commands (the simulated host's tools). */
  pathPrepend: z.array(z.string()).default([]),
  /** Project used when a request names none. */
  defaultProject: z.string().min(1).default('default'),
  /** Backend used when `volume create` names none. */
  defaultBackend: z.string().min(1).default('file'),
  /** Consumer that publishes connected devices. */
  consumer: z.string().min(1).default('host'),
  /** Whole-operation deadline. */
  operationTimeoutMs: z.number().int().positive().max(3_600_000).default(120_000),
  /** Deadline of an undo step run after a failure (runs even when the operation timed out). */
  undoTimeoutMs: z.number().int().positive().max(3_600_000).default(60_000),
  /** Default timeout of one external command. */
  commandTimeoutMs: z.number().int().positive().max(3_600_000).default(30_000),
  /** Connector defaults for this host. */
  connector: z
    .strictObject({
      multipath: z.boolean().default(false),
      enforce_multipath: z.boolean().default(false),
    })
    .default({ multipath: false, enforce_multipath: false }),
  /**
   * Where the state lives: SQLite under the data dir (the embedded default), or PostgreSQL shared
   * by many processes and hosts (`--store postgres://…`, BERTH_STORE_URL).
   */
  store: z
    .discriminatedUnion('kind', [
      z.strictObject({
        kind: z.literal('sqlite'),
        filename: z.string().optional(),
        /** How long a write waits for another process's lock before it is retried (then TIMEOUT). */
        busyTimeoutMs: z.number().int().nonnegative().max(600_000).optional(),
      }),
      z.strictObject({
        kind: z.literal('postgres'),
        /** `postgres://user[:password]@host[:port]/database`; prefer PGPASSWORD or ~/.pgpass to a password in it. */
        url: z.string().regex(/^postgres(ql)?:\/\/\S+$/, 'must be a postgres://user@host[:port]/database URL'),
        /** Pooled connections of one berth process (default 10). */
        poolSize: z.number().int().min(1).max(1000).optional(),
      }),
    ])
    .default({ kind: 'sqlite' }),
  /**
   * The transport that connects each `driver_volume_type`, over the automatic choice
   * (`{"iscsi": "iscsi-user"}`); an attach's own `transport` wins over this.
   */
  transports: z.record(z.string().min(1), z.string().min(1).max(100)).default({}),
  /** Extra plugin packages (the built-in ones are always loaded). */
  plugins: z.array(zPluginEntry).default([]),
  /** Options per plugin name, for built-in and extra plugins alike. */
  pluginOptions: z.record(z.string(), z.record(z.string(), z.unknown())).default({}),
  /** The HTTP app (`berth serve`). */
  api: z
    .strictObject({
      /** `host:port` to listen on (loopback by default). */
      listen: z.string().min(1).default('127.0.0.1:8776'),
      /**
       * Bearer tokens, stored as SHA-256 hex digests (never the token itself). `admin` can do
       * everything; `member` sees only its project and never `auth_password`; `agent` is a host
       * agent that may receive connection secrets.
       */
      tokens: z
        .array(
          z.strictObject({
            name: z.string().min(1),
            sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be a SHA-256 hex digest'),
            role: z.enum(['admin', 'member', 'agent']),
            projectId: z.string().min(1).optional(),
            /** For an `agent` token: the one host whose work it may fetch and report (RFC 1123 name). */
            host: zHostName.optional(),
          }).refine((token) => token.host === undefined || token.role === 'agent', {
            message: 'only an agent token names a host',
            path: ['host'],
          }),
        )
        .default([]),
    })
    .default({ listen: '127.0.0.1:8776', tokens: [] }),
  /** `berth agent` and the work items it runs (many hosts). */
  agent: z
    .strictObject({
      /** Lease of a claimed work item; the agent renews it every third of it. */
      leaseMs: z.number().int().min(1000).max(600_000).default(15_000),
      /** How long one claim waits for work before it answers nothing (the long-poll). */
      pollWaitMs: z.number().int().min(0).max(300_000).default(25_000),
      /**
       * An agent not heard from for this long is `offline`. Default: 45 s, or `pollWaitMs` + 20 s
       * when that is longer (an idle agent is heard from once per long-poll).
       */
      offlineAfterMs: z.number().int().min(1000).max(3_600_000).optional(),
    })
    .transform((agent) => ({ ...agent, offlineAfterMs: agent.offlineAfterMs ?? Math.max(45_000, agent.pollWaitMs + 20_000) }))
    // A shorter bound would call healthy idle agents offline between two polls (and let
    // `berth host forget` act on a live host).
    .refine((agent) => agent.offlineAfterMs >= agent.pollWaitMs + AGENT_SILENCE_MARGIN_MS, {
      message: `offlineAfterMs must be at least pollWaitMs + ${AGENT_SILENCE_MARGIN_MS} (an idle agent is heard from once per long-poll, its beat written up to 5 s late)`,
      path: ['offlineAfterMs'],
    })
    .default({ leaseMs: 15_000, pollWaitMs: 25_000, offlineAfterMs: 45_000 }),
  /**
   * API replicas sharing one store (`berth serve`): each heart-beats the operations it owns every
   * `heartbeatMs`; an operation whose lease (`leaseMs`) passed is taken over by another replica.
   */
  replica: z
    .strictObject({
      leaseMs: z.number().int().min(500).max(600_000).default(6_000),
      heartbeatMs: z.number().int().min(100).max(300_000).default(2_000),
    })
    .refine((replica) => replica.heartbeatMs * 2 <= replica.leaseMs, {
      message: 'heartbeatMs must be at most half of leaseMs (a lease must survive one missed beat)',
      path: ['heartbeatMs'],
    })
    .default({ leaseMs: 6_000, heartbeatMs: 2_000 }),
  /**
   * Upkeep: every `intervalMs` each backend's `upkeep` runs in `berth serve` (the tgt backend
   * restarts a tgtd that died and restores its targets), and each transport's where this host's
   * steps run — `berth serve` while its host has no agent, `berth agent` (iscsi-user starts its
   * dead-target watcher again); 0 turns both off.
   */
  upkeep: z
    .strictObject({
      intervalMs: z.union([z.literal(0), z.number().int().min(500).max(600_000)]).default(5_000),
    })
    .default({ intervalMs: 5_000 }),
  /**
   * Journal retention in `berth serve`: finished operations that ended more than `retainDays`
   * ago are pruned at start and then every `pruneIntervalMs`, as `berth operation prune` would
   * (it keeps what an attachment or an open work item still needs); 0 days turns it off.
   */
  journal: z
    .strictObject({
      retainDays: z.union([z.literal(0), z.number().int().min(1).max(36_500)]).default(30),
      pruneIntervalMs: z.number().int().min(1_000).max(86_400_000).default(3_600_000),
    })
    .default({ retainDays: 30, pruneIntervalMs: 3_600_000 }),
  /** Armed fault points (`attach.connect.after: crash`); for tests of crash safety only. */
  faults: z.record(z.string(), z.string()).default({}),
  /** Log level (logs go to stderr as JSON; secrets redacted). */
  logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('warn'),
}));
export type BerthConfig = z.output<typeof zConfig>;
export type BerthConfigInput = z.input<typeof zConfig>;

/** Environment variables read into the config (they win over the file). */
export const CONFIG_ENV: Record<string, keyof BerthConfigInput> = {
  BERTH_DATA_DIR: 'dataDir',
  BERTH_HOST_ROOT: 'hostRoot',
  BERTH_DEFAULT_PROJECT: 'defaultProject',
  BERTH_DEFAULT_BACKEND: 'defaultBackend',
  BERTH_OPERATION_TIMEOUT_MS: 'operationTimeoutMs',
  BERTH_COMMAND_TIMEOUT_MS: 'commandTimeoutMs',
  BERTH_LOG_LEVEL: 'logLevel',
};

const NUMERIC = new Set<string>(['operationTimeoutMs', 'commandTimeoutMs', 'undoTimeoutMs']);

/** Where a config value came from, for messages: the file, an environment variable, or an option. */
export type ConfigSource = { kind: 'file'; file?: string } | { kind: 'env'; name: string } | { kind: 'option'; name: string };

/** What `resolveConfig` says about where its inputs came from (so an error can name them). */
export interface ConfigOrigins {
  /** The config file the first argument was read from; without it the file is "the config". */
  file?: string;
  /** How the user gave each override (`{ store: '--store' }`); default `option <key>`. */
  overrides?: Partial<Record<keyof BerthConfigInput, string>>;
}

/** One problem of a config, with zod's path and where the bad value came from. */
export interface ConfigProblem {
  path: string[];
  message: string;
  source: ConfigSource;
}

/**
 * zod's issue in the words of berth's messages: `must be at most 3600000`, `unknown key`; never the
 * value itself (a store URL or a token may be a secret).
 */
function describeIssue(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'too_small': {
      const min = Number(issue.minimum);
      if (issue.origin === 'string') return min <= 1 ? 'must not be empty' : `must have at least ${min} characters`;
      if (issue.origin === 'array' || issue.origin === 'set') return `must have at least ${min} item${min === 1 ? '' : 's'}`;
      return issue.inclusive === false ? `must be greater than ${min}` : `must be at least ${min}`;
    }
    case 'too_big': {
      const max = Number(issue.maximum);
      if (issue.origin === 'string') return `must have at most ${max} characters`;
      if (issue.origin === 'array' || issue.origin === 'set') return `must have at most ${max} items`;
      return issue.inclusive === false ? `must be less than ${max}` : `must be at most ${max}`;
    }
    case 'invalid_type': {
      const received = /received (\w+)/.exec(issue.message)?.[1];
      if (received === 'undefined') return `is missing (${article(issue.expected)})`;
      if (issue.expected === 'number' && issue.message.includes('NaN')) return 'must be a number';
      return `must be ${article(issue.expected)}${received === undefined ? '' : `, not ${article(received)}`}`;
    }
    case 'invalid_value':
      return `must be ${issue.values.length === 1 ? String(issue.values[0]) : `one of ${issue.values.map(String).join(', ')}`}`;
    case 'not_multiple_of':
      return `must be a multiple of ${String(issue.divisor)}`;
    default:
      return issue.message === 'Invalid input' ? 'is not valid' : issue.message;
  }
}

function article(type: string): string {
  return `${/^[aeiou]/.test(type) ? 'an' : 'a'} ${type}`;
}

/** The problems of a failed parse, one per bad key (zod's `unrecognized_keys` lists several). */
export function configProblems(issues: readonly z.core.$ZodIssue[], sourceOf: (topKey: string | undefined) => ConfigSource, prefix: readonly string[] = []): ConfigProblem[] {
  return issues.flatMap((issue) => {
    const at = [...prefix, ...issue.path.map(String)];
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => ({ path: [...at, key], message: 'unknown key', source: sourceOf(issue.path.length > 0 ? String(issue.path[0]) : key) }));
    }
    return [{ path: at, message: describeIssue(issue), source: sourceOf(issue.path.length > 0 ? String(issue.path[0]) : undefined) }];
  });
}

function sourceLabel(source: ConfigSource): string {
  if (source.kind === 'file') return source.file === undefined ? 'config' : `config file ${source.file}`;
  return source.name;
}

/**
 * The CONFIG error for `problems`: the message names each bad key by zod's path and where it came
 * from (the file, an environment variable, an option); the hint says where to fix it.
 */
export function invalidConfigError(problems: readonly ConfigProblem[]): BerthError {
  const groups = new Map<string, { source: ConfigSource; problems: ConfigProblem[] }>();
  for (const problem of problems) {
    const label = sourceLabel(problem.source);
    const group = groups.get(label) ?? { source: problem.source, problems: [] };
    group.problems.push(problem);
    groups.set(label, group);
  }
  const parts: string[] = [];
  const hints: string[] = [];
  for (const [label, group] of groups) {
    parts.push(`invalid ${label}: ${group.problems.map((p) => `${p.path.length > 0 ? p.path.join('.') : '(root)'}: ${p.message}`).join('; ')}`);
    const keys = [...new Set(group.problems.map((p) => p.path.join('.') || '(root)'))].join(', ');
    if (group.source.kind === 'file') {
      hints.push(`fix or remove ${keys} in ${group.source.file ?? 'the config'} (every key is optional; see "The config file" in berth's README)`);
    } else if (group.source.kind === 'env') {
      hints.push(`fix or unset ${group.source.name}`);
    } else {
      hints.push(`fix ${group.source.name}`);
    }
  }
  return new BerthError('CONFIG', parts.join('; '), {
    hint: hints.join('; '),
    details: { issues: problems.map((p) => ({ path: p.path, message: p.message, source: sourceLabel(p.source) })) },
  });
}

/**
 * Build the config from a parsed file, the environment and explicit overrides (later wins),
 * validated once; throws CONFIG naming every problem, and the file, variable or option it came
 * from (`origins`).
 */
export function resolveConfig(
  file: unknown,
  env: Record<string, string | undefined>,
  overrides: Partial<BerthConfigInput> = {},
  origins: ConfigOrigins = {},
): BerthConfig {
  const fromFile = file === undefined || file === null ? {} : file;
  const fileSource: ConfigSource = { kind: 'file', ...(origins.file === undefined ? {} : { file: origins.file }) };
  if (typeof fromFile !== 'object' || Array.isArray(fromFile)) {
    throw new BerthError('CONFIG', `invalid ${sourceLabel(fileSource)}: it must be a JSON object ({"key": value, ...})`, {
      hint: origins.file === undefined ? 'give the config as an object' : `make ${origins.file} an object, or remove it (every key is optional)`,
    });
  }
  const fromEnv: Record<string, unknown> = {};
  const envName = new Map<string, string>();
  for (const [name, key] of Object.entries(CONFIG_ENV)) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    fromEnv[key] = NUMERIC.has(key) ? Number(value) : value;
    envName.set(key, name);
  }
  if (env.BERTH_FAULTS) {
    fromEnv.faults = parseFaultSpec(env.BERTH_FAULTS);
    envName.set('faults', 'BERTH_FAULTS');
  }
  if (env.BERTH_STORE_URL) {
    fromEnv.store = { kind: 'postgres', url: env.BERTH_STORE_URL };
    envName.set('store', 'BERTH_STORE_URL');
  }
  if (env.BERTH_PATH_PREPEND) {
    fromEnv.pathPrepend = env.BERTH_PATH_PREPEND.split(':').filter(Boolean);
    envName.set('pathPrepend', 'BERTH_PATH_PREPEND');
  }
  const defined = Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined));
  const result = zConfig.safeParse({ ...fromFile, ...fromEnv, ...defined });
  if (result.success) return result.data;
  const sourceOf = (key: string | undefined): ConfigSource => {
    if (key !== undefined && key in defined) {
      return { kind: 'option', name: origins.overrides?.[key as keyof BerthConfigInput] ?? `option ${key}` };
    }
    const name = key === undefined ? undefined : envName.get(key);
    return name === undefined ? fileSource : { kind: 'env', name };
  };
  throw invalidConfigError(configProblems(result.error.issues, sourceOf));
}
