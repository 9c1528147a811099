import type { CommandResult, CommandRunner, RunOptions } from '@berth/host';
import { formatCommand } from '@berth/host';
import type { RecordedCommand } from '@berth/testkit/fixtures';

/** What a replayed command answers: a recorded command's exit code and output. */
export type RecordedReply = Pick<RecordedCommand, 'cmd' | 'rc' | 'stdout' | 'stderr'>;

/** A runner that answers every command with one recorded result, and remembers what it ran. */
export function replayRunner(answer: (file: string, args: readonly string[]) => RecordedReply | 'not-found'): CommandRunner & {
  calls: Array<{ command: string; args: readonly string[]; options: RunOptions }>;
} {
  const calls: Array<{ command: string; args: readonly string[]; options: RunOptions }> = [];
  return {
    calls,
    async run(file, args, options = {}): Promise<CommandResult> {
      const command = formatCommand(file, args, options.secrets ?? []);
      calls.push({ command, args, options });
      const recorded = answer(file, args);
      if (recorded === 'not-found') {
        return { command, exitCode: -1, stdout: '', stderr: '', durationMs: 0, timedOut: false, aborted: false, notFound: true };
      }
      return { command, exitCode: recorded.rc, stdout: recorded.stdout, stderr: recorded.stderr, durationMs: 1, timedOut: false, aborted: false };
    },
  };
}
