#!/usr/bin/env node
// The `berth` executable: oclif finds the commands from package.json's `oclif` field (and their
// flags from oclif.manifest.json, so that starting loads no command it does not run).
//
// @oclif/core checks at import that this Node satisfies its own `engines` (node >= 18, which
// berth's >= 20.6 implies) with the whole of semver: ~10 ms CPU of every start (`--version`
// 0.93×, `--help` 0.97× the CPU without it, 10–12 alternating pairs).
// Switched off for that import only (the variable is oclif's own), so no child process inherits it.
const engineWarning = process.env.OCLIF_DISABLE_ENGINE_WARNING;
process.env.OCLIF_DISABLE_ENGINE_WARNING = '1';
const { flush, run } = await import('../dist/bundle/oclif.js');
if (engineWarning === undefined) delete process.env.OCLIF_DISABLE_ENGINE_WARNING;
else process.env.OCLIF_DISABLE_ENGINE_WARNING = engineWarning;

// Global flags before the command (`berth --data-dir X volume list`, `berth --json volume list`,
// `berth --simulate attach db1`, `berth --store postgres://… attach db1`) mean what they mean after
// it. oclif reads flags only after the command's words, so those with an environment variable become it (which the shared flags, the
// runtime and oclif's plugin commands all read), and --json and --verbose move behind the command.
const BY_ENV = { '--data-dir': 'BERTH_DATA_DIR', '--config': 'BERTH_CONFIG', '--api': 'BERTH_API_URL', '--store': 'BERTH_STORE_URL' };
const MOVED = new Set(['--json', '--verbose']);

const argv = process.argv.slice(2);
const moved = [];
for (;;) {
  const [first = '', second] = argv;
  const [name, inline] = first.startsWith('--') && first.includes('=') ? [first.slice(0, first.indexOf('=')), first.slice(first.indexOf('=') + 1)] : [first, undefined];
  if (name === '--simulate' && inline === undefined) {
    process.env.BERTH_SIMULATE = '1';
    argv.shift();
  } else if (name in BY_ENV && inline !== undefined) {
    process.env[BY_ENV[name]] = inline;
    argv.shift();
  } else if (name in BY_ENV && second !== undefined && argv.length > 2) {
    process.env[BY_ENV[name]] = second;
    argv.splice(0, 2);
  } else if (MOVED.has(first) && argv.length > 1) {
    moved.push(argv.shift());
  } else {
    break;
  }
}
// `--data-dir` after the command names the data dir too: oclif's plugin commands, which keep
// installed plugins there, read it from the environment.
const end = argv.includes('--') ? argv.indexOf('--') : argv.length;
const dataDir = argv.slice(0, end).findLast((arg, i, all) => all[i - 1] === '--data-dir' || arg.startsWith('--data-dir='));
if (dataDir !== undefined) process.env.BERTH_DATA_DIR = dataDir.startsWith('--data-dir=') ? dataDir.slice('--data-dir='.length) : dataDir;

const args = [...argv.slice(0, end), ...moved, ...argv.slice(end)];
try {
  await run(args, import.meta.url);
  await flush();
} catch (error) {
  // A berth command reports its own failures; what arrives here failed outside one (an unknown
  // command, a plugin-plugins command, a hook): it is printed in berth's Error/Hint shape too.
  const exit = error?.oclif?.exit;
  if (error?.code === 'EEXIT' && typeof exit === 'number') {
    process.exitCode = exit;
  } else {
    const { failureOutput } = await import('../dist/error-report.js');
    const debug = ['DEBUG', 'BERTH_DEBUG'].some((name) => !['', '0', 'false', undefined].includes(process.env[name]));
    const failure = failureOutput(error, { json: args.slice(0, end).includes('--json'), debug });
    if (failure.stdout !== undefined) process.stdout.write(`${failure.stdout}\n`);
    if (failure.stderr !== undefined) process.stderr.write(`${failure.stderr}\n`);
    process.exitCode = failure.exitCode;
  }
}
