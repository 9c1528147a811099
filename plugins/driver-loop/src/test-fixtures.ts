import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The recorded real tool outputs: `shared/fixtures/real` beside the repository checkout. */
export const FIXTURES_DIR = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../..',
  '../shared/fixtures/real',
);

/** One recorded command: its command line, exit code and output, byte for byte. */
export interface RecordedCommand {
  cmd: string;
  rc: number;
  stdout: string;
  stderr: string;
}

/** Read a command fixture (format in the fixtures' README). */
export function readFixture(name: string): RecordedCommand {
  const text = readFileSync(path.join(FIXTURES_DIR, name), 'utf8');
  const lines = text.split('\n');
  const stdoutAt = lines.indexOf('# stdout:');
  const stderrAt = lines.indexOf('# stderr:', stdoutAt + 1);
  if (stdoutAt < 0 || stderrAt < 0) throw new Error(`${name} is not a command fixture`);
  const header = lines.slice(0, stdoutAt);
  const field = (key: string): string => {
    const line = header.find((l) => l.startsWith(`# ${key}: `));
    if (line === undefined) throw new Error(`${name} has no ${key}`);
    return line.slice(`# ${key}: `.length);
  };
  const stdoutLines = lines.slice(stdoutAt + 1, stderrAt);
  return {
    cmd: field('cmd'),
    rc: Number(field('rc')),
    stdout: stdoutLines.length === 0 ? '' : `${stdoutLines.join('\n')}\n`,
    stderr: lines.slice(stderrAt + 1).join('\n'),
  };
}
