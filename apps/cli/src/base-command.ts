import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Command, Flags, ux } from '@oclif/core';
import type { Interfaces } from '@oclif/core';
import type { BerthService } from '@berth/core';
import type { OpenBerthOptions } from '@berth/runtime';
import { errorJson, errorLines, reportError } from './error-report.js';

// The names @berth/client reads; written out here so that defining the flags loads no client code.
const API_URL_ENV = 'BERTH_API_URL';
const TOKEN_ENV = 'BERTH_TOKEN';

/** Flags of a command `T`, including the shared ones. */
export type CommandFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>;
/** Arguments of a command `T`. */
export type CommandArgs<T extends typeof Command> = Interfaces.InferredArgs<T['args']>;

/**
 * What every berth command shares: `--json`, `--data-dir`, `--config`, `--api`, one BerthService
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
    simulate: Flags.boolean({
      description:
        "Run the iSCSI transports on berth's simulated host (real-backed: logins reach the real target, disks are real loop devices) — for machines whose kernel cannot log in to iSCSI [env: BERTH_SIMULATE]",
      env: 'BERTH_SIMULATE',
      helpGroup: 'GLOBAL',
    }),
    api: Flags.string({
      description: `Run the command through the berth API at this URL (its token from ${TOKEN_ENV}) instead of on the local state`,
      env: API_URL_ENV,
      helpGroup: 'GLOBAL',
    }),
  };

  /** Commands that print the plugin report themselves set this to skip the broken-plugin warning. */
  static reportsPlugins = false;

  protected flags!: CommandFlags<T>;
  protected args!: CommandArgs<T>;
  private service: BerthService | undefined;

  override async init(): Promise<void> {
    await super.init();
    const ctor = this.ctor as typeof BaseCommand;
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
        ? await (await import('@berth/runtime')).openBerth(this.openBerthOptions())
        : await (await import('@berth/client')).openRemoteBerth({
            url: api,
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

  protected override async catch(error: Error): Promise<void> {
    // oclif's own exit (from this.exit) already carries its code and prints nothing.
    if ((error as { code?: unknown }).code === 'EEXIT') throw error;
    const report = reportError(error, { commandId: this.id, debug: debugEnabled() });
    if (this.jsonEnabled()) {
      ux.stdout(JSON.stringify(errorJson(report), null, 2));
    } else {
      ux.stderr(errorLines(report).join('\n'));
    }
    process.exitCode = report.exitCode;
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

function debugEnabled(): boolean {
  const value = process.env['DEBUG'] ?? process.env['BERTH_DEBUG'];
  return value !== undefined && value !== '' && value !== '0' && value !== 'false';
}

// oclif's plugin-plugins installs packages into its data dir (with a package.json listing them);
// the runtime's loader scans that package.json's dependencies for berth plugins.
function installedPluginDirs(oclifDataDir: string): string[] {
  return existsSync(join(oclifDataDir, 'package.json')) ? [oclifDataDir] : [];
}
