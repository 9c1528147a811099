import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline/promises';
import { Command, Flags, ux } from '@oclif/core';
import { config as zodConfig } from '@berth/core/zod';
import { BerthError } from '@berth/core/errors';
import type { Interfaces } from '@oclif/core';
import type { BerthService, OperationOutcome, StartedOperation } from '@berth/core';
import type { OpenBerthOptions } from '@berth/runtime';
import { failureOutput } from './error-report.js';

// The names @berth/client reads; written out here so that defining the flags loads no client code.
const API_URL_ENV = 'BERTH_API_URL';
const TOKEN_ENV = 'BERTH_TOKEN';
// Read by the runtime's config: a level set here also sends the log to stderr.
const LOG_LEVEL_ENV = 'BERTH_LOG_LEVEL';

/** `--yes`: the flag of every command that destroys or changes what it cannot undo. */
export const yesFlag = Flags.boolean({
  char: 'y',
  description: 'Do it without asking (needed without a terminal: scripts, CI)',
  default: false,
});

/** `-o wide`: tables with every column and nothing cut (by default they fit 100 columns). */
export const outputFlag = Flags.option({
  char: 'o',
  description: 'Output format: wide shows every column and cuts nothing (default: the table fits 100 columns)',
  options: ['wide'] as const,
})();

/** Flags of a command `T`, including the shared ones. */
export type CommandFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>;
/** Arguments of a command `T`. */
export type CommandArgs<T extends typeof Command> = Interfaces.InferredArgs<T['args']>;

/**
 * What every berth command shares: `--json`, `--data-dir`, `--config`, `--store`, `--api`, one BerthService
 * opened on demand (the local one from `openBerth`, or with `--api`/BERTH_API_URL a client of the
 * HTTP app: same methods, same outputs, same exit codes) and closed at the end, a spinner for long
 * steps, and one way to report errors.
 */
export abstract class BaseCommand<T extends typeof Command> extends Command {
  static override enableJsonFlag = true;

  static override baseFlags = {
    'data-dir': Flags.string({
      description: 'Where berth keeps its database, volume files and run state [env: BERTH_DATA_DIR]',
      helpGroup: 'GLOBAL',
    }),
    config: Flags.string({
      description: 'The config file [env: BERTH_CONFIG; default: <data dir>/config.json when present]',
      helpGroup: 'GLOBAL',
    }),
    store: Flags.string({
      description:
        'Keep the state in this PostgreSQL database (postgres://user@host[:port]/database) instead of SQLite in the data dir [env: BERTH_STORE_URL]; put the password in PGPASSWORD or ~/.pgpass, not here',
      helpGroup: 'GLOBAL',
    }),
    simulate: Flags.boolean({
      description:
        "Run the iSCSI transports on berth's simulated host (real-backed: logins reach the real target, disks are real loop devices) — for machines whose kernel cannot log in to iSCSI",
      env: 'BERTH_SIMULATE',
      helpGroup: 'GLOBAL',
    }),
    api: Flags.string({
      description: `Run the command through the berth API at this URL (its token from ${TOKEN_ENV}) instead of on the local state; several replicas of one API separated by commas (URL1,URL2): one that cannot be reached, or stays silent for a request safe to send twice, is passed over for the next`,
      env: API_URL_ENV,
      helpGroup: 'GLOBAL',
    }),
    verbose: Flags.boolean({
      description: `Log what berth does on stderr, at debug level unless ${LOG_LEVEL_ENV} says otherwise (without it, logs go to <data dir>/logs/berth.log)`,
      helpGroup: 'GLOBAL',
    }),
  };

  /** Commands that print the plugin report themselves set this to skip the broken-plugin warning. */
  static reportsPlugins = false;

  /** Commands that keep running and parse the same shapes again and again (`serve`, `agent`) set this. */
  static longRunning = false;

  protected flags!: CommandFlags<T>;
  protected args!: CommandArgs<T>;
  private service: BerthService | undefined;

  override async init(): Promise<void> {
    await super.init();
    const ctor = this.ctor as typeof BaseCommand;
    // A command that runs once parses each schema once or twice: zod's compiled fast path (a
    // generated function per object schema, ~10 ms of `volume list`'s start) would never pay off.
    if (!ctor.longRunning) zodConfig({ jitless: true });
    const { args, flags } = await this.parse({
      args: ctor.args,
      baseFlags: ctor.baseFlags,
      enableJsonFlag: ctor.enableJsonFlag,
      flags: ctor.flags,
      strict: ctor.strict,
    });
    this.flags = flags as CommandFlags<T>;
    this.args = args as CommandArgs<T>;
  }

  /** What `openBerth` gets from this command's flags: data dir, config file and installed plugins. */
  protected openBerthOptions(): OpenBerthOptions {
    return {
      ...(this.flags['data-dir'] === undefined ? {} : { dataDir: this.flags['data-dir'] }),
      ...(this.flags.config === undefined ? {} : { configFile: this.flags.config }),
      ...(this.flags.store === undefined ? {} : { storeUrl: this.flags.store }),
      pluginDirs: installedPluginDirs(this.config.dataDir),
      ...(this.flags.simulate ? { simulate: true } : {}),
    };
  }

  /**
   * The berth service, opened on first use: with `--api` (or BERTH_API_URL) a client of that API,
   * else the local one with this command's data dir, config and plugins.
   */
  protected async berth(): Promise<BerthService> {
    if (this.service !== undefined) return this.service;
    const api = this.flags.api;
    // Imported here, not at the top: a command loads the local runtime (store, plugins) or the HTTP
    // client only when it runs, and only the one it uses; `--version` and `--help` load neither.
    const service =
      api === undefined || api === ''
        ? await this.openLocalBerth()
        : await (await import('@berth/client')).openRemoteBerth({
            ...apiUrls(api),
            ...(process.env[TOKEN_ENV] === undefined ? {} : { token: process.env[TOKEN_ENV] }),
          });
    this.service = service;
    if (!this.jsonEnabled() && !(this.ctor as typeof BaseCommand).reportsPlugins) {
      // One broken plugin must not stop berth, but people should know why its driver is missing.
      for (const failure of service.plugins().failed) {
        ux.stderr(`Warning: plugin ${failure.packageName} could not be loaded: ${failure.error} (see \`berth doctor\`)`);
      }
    }
    return service;
  }

  /**
   * Ask before a destructive step: on a terminal, `question [y/N]` on stderr (anything but y/yes
   * stops the command, changing nothing); without one, only `--yes` lets it go on. `command` is how
   * the user repeats it with `--yes`.
   */
  protected async confirm(question: string, command: string): Promise<void> {
    if ((this.flags as { yes?: boolean }).yes === true) return;
    if (process.stdin.isTTY !== true) {
      throw new BerthError('VALIDATION', `${question.replace(/\?$/, '')}: this asks for confirmation, and there is no terminal to ask on`, {
        hint: `confirm with --yes: \`${command} --yes\``,
      });
    }
    const prompt = createInterface({ input: process.stdin, output: process.stderr });
    let answer: string;
    try {
      answer = await prompt.question(`${question} [y/N] `);
    } finally {
      prompt.close();
    }
    if (!['y', 'yes'].includes(answer.trim().toLowerCase())) {
      throw new BerthError('CANCELLED', 'not confirmed: nothing was changed', { hint: `run it again and answer y, or add --yes: \`${command} --yes\`` });
    }
  }

  /**
   * The local berth. Its log goes to `<data dir>/logs/berth.log`, so that a failed command shows the
   * user its error and hint, not the log lines behind them; `--verbose` or BERTH_LOG_LEVEL put the
   * log on stderr instead.
   */
  private async openLocalBerth(): Promise<BerthService> {
    const runtime = await import('@berth/runtime');
    const options = this.openBerthOptions();
    if (this.flags.verbose && process.env[LOG_LEVEL_ENV] === undefined) process.env[LOG_LEVEL_ENV] = 'debug';
    const toStderr = this.flags.verbose || process.env[LOG_LEVEL_ENV] !== undefined;
    const dataDir = options.dataDir ?? runtime.defaultDataDir();
    return runtime.openBerth({ ...options, ...(toStderr ? {} : { logFile: join(dataDir, 'logs', 'berth.log') }) });
  }

  /** Run `work` under a spinner on stderr, only when a person watches (TTY, no --json). */
  protected async withSpinner<R>(text: string, work: () => Promise<R>): Promise<R> {
    if (process.stderr.isTTY !== true || this.jsonEnabled()) return work();
    ux.action.start(text);
    let result: R;
    try {
      result = await work();
    } catch (error) {
      // Stop before the error is printed: a running spinner swallows what is written to stderr.
      ux.action.stop('failed');
      throw error;
    }
    ux.action.stop('done');
    return result;
  }

  /**
   * Wait for an operation `start` began. Embedded (the service runs it, so it can cancel it), the
   * first SIGINT (Ctrl-C) or SIGTERM cancels it: it stops as at a passed deadline and rolls back
   * (an attach; a detach that has not let go of the device yet — one that has finishes) and the
   * command ends with CANCELLED (exit 11). A second one exits at once (130 / 143): the commands it
   * started get SIGTERM, and the next berth command's recovery finishes the rollback. With `--api`
   * signals keep their default (the server's operation goes on), and `whole` runs instead (over
   * HTTP: one request when the operation ends in time).
   */
  protected async untilDone(
    berth: BerthService,
    what: string,
    start: () => Promise<StartedOperation>,
    whole: () => Promise<OperationOutcome>,
  ): Promise<OperationOutcome> {
    if (berth.cancel === undefined) return whole();
    const started = await start();
    let interrupted = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (interrupted) {
        // The spinner goes first: it would swallow the line (and leave the cursor hidden).
        if (ux.action.running) ux.action.stop('stopped');
        ux.stderr(`${signal === 'SIGINT' ? '\n' : ''}Stopped at once: the next berth command finishes the rollback of the ${what}`);
        process.exit(signal === 'SIGINT' ? 130 : 143);
      }
      interrupted = true;
      const reason = signal === 'SIGINT' ? 'interrupted (Ctrl-C)' : `berth got ${signal}`;
      if (!berth.cancel?.(started.operation.id, reason)) return;
      const how = what === 'detach' ? 'stopping the detach: it rolls back, or finishes if the device is already let go' : `rolling back the ${what}`;
      const note = `${how} (${signal === 'SIGINT' ? 'Ctrl-C' : signal} again stops at once)`;
      if (ux.action.running) ux.action.status = note;
      else ux.stderr(`${signal === 'SIGINT' ? '\n' : ''}Interrupted: ${note}`);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    try {
      return await started.done;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  }

  protected override async catch(error: Error): Promise<void> {
    // oclif's own exit (from this.exit) already carries its code and prints nothing.
    if ((error as { code?: unknown }).code === 'EEXIT') throw error;
    const failure = failureOutput(error, {
      json: this.jsonEnabled(),
      ...(this.id === undefined ? {} : { commandId: this.id }),
      debug: debugEnabled(),
      ...(this.firstExample() === undefined ? {} : { example: this.firstExample() }),
    });
    if (failure.stdout !== undefined) ux.stdout(failure.stdout);
    if (failure.stderr !== undefined) ux.stderr(failure.stderr);
    process.exitCode = failure.exitCode;
  }

  // The command's first example, as the user would type it (for the hint of a usage error).
  private firstExample(): string | undefined {
    const example = (this.ctor.examples ?? [])[0];
    const text = typeof example === 'string' ? example : example?.command;
    return text
      ?.replaceAll('<%= config.bin %>', this.config.bin)
      .replaceAll('<%= command.id %>', (this.id ?? '').replaceAll(':', ' '))
      .replace(/\s+#.*$/, '');
  }

  protected override async finally(error: Error | undefined): Promise<void> {
    const service = this.service;
    this.service = undefined;
    if (service !== undefined) {
      try {
        await service.close();
      } catch (closeError) {
        // The command's own result or error is what the user needs; a failed close is only logged.
        if (debugEnabled()) ux.stderr(`warning: closing berth failed: ${String(closeError)}`);
      }
    }
    await super.finally(error);
  }
}

/**
 * `--api`'s URLs: one, or several replicas' separated by commas (the first, then the others in
 * turn when one cannot be reached). CONFIG for an empty one.
 */
export function apiUrls(api: string): { url: string; fallbackUrls: string[] } {
  const [url = '', ...fallbackUrls] = api.split(',').map((part) => part.trim());
  if (url === '' || fallbackUrls.includes('')) {
    throw new BerthError('CONFIG', `--api ${JSON.stringify(api)} has an empty URL`, { hint: 'give URLs separated by commas: --api http://10.0.0.1:8776,http://10.0.0.2:8776' });
  }
  return { url, fallbackUrls };
}

function debugEnabled(): boolean {
  const value = process.env['DEBUG'] ?? process.env['BERTH_DEBUG'];
  return value !== undefined && value !== '' && value !== '0' && value !== 'false';
}

// oclif's plugin-plugins installs packages into its data dir (with a package.json listing them);
// the runtime's loader scans that package.json's dependencies for berth plugins.
export function installedPluginDirs(oclifDataDir: string): string[] {
  return existsSync(join(oclifDataDir, 'package.json')) ? [oclifDataDir] : [];
}
