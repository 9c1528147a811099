import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CommandResult, CommandRunner, RunOptions } from '@berth/host';
import { formatCommand } from '@berth/host';

/** Copies of the recorded tgtadm outputs (from ../shared/fixtures/real, recorded with tgt 1.0.85). */
export const FIXTURES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures');

/** One recorded command: its command line, exit code and output, byte for byte. */
export interface RecordedCommand {
  cmd: string;
  rc: number;
  stdout: string;
  stderr: string;
}

/** Read a fixture: split on the first `# stdout:` line, then on the first `# stderr:` after it. */
export function readFixture(name: string): RecordedCommand {
  const lines = readFileSync(path.join(FIXTURES_DIR, name), 'utf8').split('\n');
  const stdoutAt = lines.indexOf('# stdout:');
  const stderrAt = lines.indexOf('# stderr:', stdoutAt + 1);
  if (stdoutAt < 0 || stderrAt < 0) throw new Error(`${name} is not a command fixture`);
  const field = (key: string): string => lines.slice(0, stdoutAt).find((l) => l.startsWith(`# ${key}: `))?.slice(key.length + 4) ?? '';
  const stdoutLines = lines.slice(stdoutAt + 1, stderrAt);
  return {
    cmd: field('cmd'),
    rc: Number(field('rc')),
    stdout: stdoutLines.length === 0 ? '' : `${stdoutLines.join('\n')}\n`,
    stderr: lines.slice(stderrAt + 1).join('\n'),
  };
}

/** A runner that answers every command with one recorded result, and remembers what it ran. */
export function replayRunner(answer: (file: string, args: readonly string[]) => RecordedCommand | 'not-found'): CommandRunner & {
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
