import type { Hook } from '@oclif/core';
import levenshtein from 'fast-levenshtein';
import { BerthError } from '@berth/core/errors';

/** The command id nearest to `id` (what @oclif/plugin-not-found suggests too). */
export function closestCommand(id: string, ids: readonly string[]): string | undefined {
  let best: { id: string; distance: number } | undefined;
  for (const candidate of ids) {
    const distance = levenshtein.get(id, candidate);
    if (best === undefined || distance < best.distance) best = { id: candidate, distance };
  }
  return best?.id;
}

/**
 * An unknown command. On a terminal, @oclif/plugin-not-found asks "Did you mean …?" and runs the
 * suggestion on "yes"; on "no", and elsewhere (scripts, CI), it fails as a berth usage error (exit
 * 2): the suggestion is its hint.
 */
const hook: Hook.CommandNotFound = async function commandNotFound(options) {
  const { config, id } = options;
  const words = (commandId: string): string => commandId.replaceAll(':', ' ');
  // `berth volume list foo`: a real command and words it does not take (oclif, with commands
  // separated by spaces, reads them as a longer command's name). Not a typo: say what is extra.
  const parts = id.split(':');
  for (let known = parts.length - 1; known > 0; known--) {
    const command = config.findCommand(parts.slice(0, known).join(':'));
    if (command === undefined || command.hidden === true) continue;
    // A command that is also a topic (`berth plugins`): the next word may be a mistyped
    // subcommand (`plugins instal`), which the suggestion below names better.
    if (config.commands.some((other) => other.id.startsWith(`${command.id}:`))) break;
    const extra = parts.slice(known);
    throw new BerthError('VALIDATION', `\`berth ${words(command.id)}\` takes no argument${extra.length > 1 ? 's' : ''} ${extra.map((word) => `"${word}"`).join(' ')}`, {
      hint: `\`berth ${words(command.id)} --help\` shows what it takes`,
    });
  }
  const notACommand = (): BerthError => {
    const visible = config.commands.filter((command) => command.hidden !== true);
    const suggestion = closestCommand(id, [...visible.map((command) => command.id), ...visible.flatMap((command) => command.aliases)]);
    const topic = id.split(':')[0] ?? '';
    const help = config.findTopic(topic) === undefined ? 'berth help' : `berth help ${topic}`;
    return new BerthError('VALIDATION', `\`${words(id)}\` is not a berth command`, {
      hint: `${suggestion === undefined ? '' : `did you mean \`berth ${words(suggestion)}\`? `}\`${help}\` lists the commands`,
    });
  };
  if (process.stdin.isTTY === true && process.stderr.isTTY === true) {
    // Imported here, as an ES module: its default export is the hook both built and bundled (the
    // CLI's CommonJS bundle made a static import's `default` the module namespace: "is not a function").
    const { default: notFound } = await import('@oclif/plugin-not-found');
    try {
      return await notFound.call(this, options);
    } catch (error) {
      // Answered "No": plugin-not-found's own "Run berth help … for a list" (exit 127) becomes the
      // usage error, exit 2. Anything else (the suggested command's own failure) stays as it is.
      if ((error as { oclif?: { exit?: unknown } } | null)?.oclif?.exit === 127) throw notACommand();
      throw error;
    }
  }
  throw notACommand();
};

export default hook;
