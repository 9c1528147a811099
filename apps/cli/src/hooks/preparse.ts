import type { Hook } from '@oclif/core';
import { BerthError, EXIT_CODES } from '@berth/core/errors';
import { localPackageSpec } from '../local-package-spec.js';

const INSTALL_COMMANDS = new Set(['plugins:install', 'plugins:add']);

/** Lets `berth plugins install ./dir` and `berth plugins install ./pkg.tgz` install from disk. */
const hook: Hook.Preparse = async function preparse({ argv, options }) {
  const id = (options.context as { id?: string } | undefined)?.id;
  if (id === undefined || !INSTALL_COMMANDS.has(id)) return argv;
  try {
    return argv.map((arg) => localPackageSpec(arg) ?? arg);
  } catch (error) {
    // oclif swallows a hook's error unless it carries an exit code (`oclif.exit`); the bin then
    // prints it in berth's Error/Hint shape.
    if (error instanceof BerthError) Object.assign(error, { oclif: { exit: EXIT_CODES[error.code] } });
    throw error;
  }
};

export default hook;
