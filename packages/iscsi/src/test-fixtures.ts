import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The recorded real tool outputs: `<repo>/../shared/fixtures/real`. */
export const FIXTURES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..', '../shared/fixtures/real');

/** One recorded command: its command line, exit code and output, byte for byte. */
export interface RecordedCommand {
  name: string;
  cmd: string;
  rc: number;
  stdout: string;
  stderr: string;
}

/**
 * Read a command fixture (format in the fixtures' README): split on the first `# stdout:` line,
 * then on the first `# stderr:` line after it.
 */
export function readFixture(name: string): RecordedCommand {
  const lines = readFileSync(path.join(FIXTURES_DIR, name), 'utf8').split('\n');
  const stdoutAt = lines.indexOf('# stdout:');
  const stderrAt = lines.indexOf('# stderr:', stdoutAt + 1);
  if (stdoutAt < 0 || stderrAt < 0) throw new Error(`${name} is not a command fixture`);
  const header = lines.slice(0, stdoutAt);
  const field = (key: string): string => {
    const line = header.find((l) => l.startsWith(`# ${key}: `));
    if (line === undefined) throw new Error(`${name} has no ${key}`);
    return line.slice(`# ${key}: `.length);
  };
  // Recorded stdout always ends with a newline (the recorder adds one when missing).
  const stdoutLines = lines.slice(stdoutAt + 1, stderrAt);
  return {
    name,
    cmd: field('cmd'),
    rc: Number(field('rc')),
    stdout: stdoutLines.length === 0 ? '' : `${stdoutLines.join('\n')}\n`,
    stderr: lines.slice(stderrAt + 1).join('\n'),
  };
}

/** The names of every `iscsiadm-*.txt` fixture. */
export function iscsiadmFixtureNames(): string[] {
  return readdirSync(FIXTURES_DIR).filter((n) => n.startsWith('iscsiadm-') && n.endsWith('.txt')).sort();
}
