import type { Hook } from '@oclif/core';
import notFound from '@oclif/plugin-not-found';
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
 * answer; elsewhere (scripts, CI) it fails as a berth usage error: the suggestion is its hint.
 */
const hook: Hook.CommandNotFound = async function commandNotFound(options) {
  if (process.stdin.isTTY === true && process.stderr.isTTY === true) return notFound.call(this, options);
  const { config, id } = options;
  const visible = config.commands.filter((command) => command.hidden !== true);
  const suggestion = closestCommand(id, [...visible.map((command) => command.id), ...visible.flatMap((command) => command.aliases)]);
  const words = (commandId: string): string => commandId.replaceAll(':', ' ');
  const topic = id.split(':')[0] ?? '';
  const help = config.findTopic(topic) === undefined ? 'berth help' : `berth help ${topic}`;
  throw new BerthError('VALIDATION', `\`${words(id)}\` is not a berth command`, {
    hint: `${suggestion === undefined ? '' : `did you mean \`berth ${words(suggestion)}\`? `}\`${help}\` lists the commands`,
  });
};

export default hook;
