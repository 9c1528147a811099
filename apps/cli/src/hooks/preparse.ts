import type { Hook } from '@oclif/core';
import { localPackageSpec } from '../local-package-spec.js';

const INSTALL_COMMANDS = new Set(['plugins:install', 'plugins:add']);

/** Lets `berth plugins install ./dir` and `berth plugins install ./pkg.tgz` install from disk. */
const hook: Hook.Preparse = async function preparse({ argv, options }) {
  const id = (options.context as { id?: string } | undefined)?.id;
  if (id === undefined || !INSTALL_COMMANDS.has(id)) return argv;
  return argv.map((arg) => localPackageSpec(arg) ?? arg);
};

export default hook;
