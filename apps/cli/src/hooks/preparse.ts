import type { Hook } from '@oclif/core';
import { BerthError, EXIT_CODES, toBerthError } from '@berth/core/errors';
import { localPackageSpec } from '../local-package-spec.js';
import { checkLinkPath, isPluginsCommand, reportAsBerth, type PluginsCommand } from '../plugin-commands.js';

const INSTALL_COMMANDS = new Set(['plugins:install', 'plugins:add']);
const UNINSTALL_COMMANDS = new Set(['plugins:uninstall', 'plugins:remove', 'plugins:unlink']);

/**
 * Lets `berth plugins install ./dir` and `berth plugins install ./pkg.tgz` install from disk, and
 * refuses `berth plugins uninstall P` while this host's berth state still needs P (an attachment
 * through its transport or consumer, a volume on its backend: they could not be detached or
 * deleted without it) unless `--force` is given, and `berth plugins link PATH` of a path that is no
 * package directory. Every plugin-plugins command reports its failures (and with `--json` its list or what
 * it changed) as berth's commands do (`reportAsBerth`).
 */
const hook: Hook.Preparse = async function preparse({ argv: given, options }) {
  const id = (options.context as { id?: string } | undefined)?.id;
  if (id === undefined) return given;
  if (!isPluginsCommand(id)) return given;
  try {
    const argv = await reportAsBerth(options.context as unknown as PluginsCommand, id, given);
    if (id === 'plugins:link') checkLinkPath(argv);
    if (UNINSTALL_COMMANDS.has(id)) {
      const rest = argv.filter((arg) => arg !== '--force');
      if (rest.length === argv.length) {
        const [{ pluginsInUse, pluginInUseError }, { installedPluginDirs }] = await Promise.all([import('../plugin-in-use.js'), import('../base-command.js')]);
        const inUse = await pluginsInUse(
          rest.filter((arg) => !arg.startsWith('-')),
          installedPluginDirs(this.config.dataDir),
        ).catch((error: unknown) => {
          const e = toBerthError(error);
          throw new BerthError(e.code, `cannot tell whether berth still needs the plugin: ${e.message}`, {
            hint: `${e.hint ? `${e.hint}; or ` : ''}uninstall without the check with --force`,
            cause: error,
          });
        });
        if (inUse.length > 0) throw pluginInUseError(inUse);
      }
      return rest;
    }
    if (!INSTALL_COMMANDS.has(id)) return argv;
    return argv.map((arg) => localPackageSpec(arg) ?? arg);
  } catch (error) {
    // oclif swallows a hook's error unless it carries an exit code (`oclif.exit`); the bin then
    // prints it in berth's Error/Hint shape.
    if (error instanceof BerthError) Object.assign(error, { oclif: { exit: EXIT_CODES[error.code] } });
    throw error;
  }
};

export default hook;
