import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The recorded real tool outputs: `<repo>/../shared/fixtures/real`. */
export const FIXTURES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..', '../shared/fixtures/real');

/** One recorded command: its command line, exit code and output, byte for byte. */
export interface RecordedCommand {
  cmd: string;
  /** The command line split on spaces, without the program name. */
  args: string[];
  rc: number;
  stdout: string;
  stderr: string;
}

/** Read a command fixture (split on the first `# stdout:` line, then the first `# stderr:` after it). */
export function readFixture(name: string): RecordedCommand {
  const lines = readFileSync(path.join(FIXTURES_DIR, name), 'utf8').split('\n');
  const stdoutAt = lines.indexOf('# stdout:');
  const stderrAt = lines.indexOf('# stderr:', stdoutAt + 1);
  if (stdoutAt < 0 || stderrAt < 0) throw new Error(`${name} is not a command fixture`);
  const field = (key: string): string => {
    const line = lines.slice(0, stdoutAt).find((l) => l.startsWith(`# ${key}: `));
    if (line === undefined) throw new Error(`${name} has no ${key}`);
    return line.slice(`# ${key}: `.length);
  };
  const stdoutLines = lines.slice(stdoutAt + 1, stderrAt);
  const cmd = field('cmd');
  return {
    cmd,
    args: cmd.split(' ').slice(1),
    rc: Number(field('rc')),
    stdout: stdoutLines.length === 0 ? '' : `${stdoutLines.join('\n')}\n`,
    stderr: lines.slice(stderrAt + 1).join('\n'),
  };
}

/**
 * The stderr a run of the fixture's command gives on a host where iscsid runs: the recording
 * machine had none, so the lines about reaching it are dropped.
 */
export function stderrWithIscsid(stderr: string): string {
  return stderr
    .split('\n')
    .filter(
      (l) =>
        !l.startsWith('System has not been booted with systemd') &&
        !l.startsWith('Failed to connect to bus') &&
        !l.startsWith('iscsiadm: can not connect to iSCSI daemon'),
    )
    .join('\n');
}
