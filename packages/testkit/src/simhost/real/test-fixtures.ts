import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The recorded real tool outputs: `<repo>/../shared/fixtures/real`. */
export const FIXTURES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../../..', '../shared/fixtures/real');

/** One recorded command: its command line, exit code and output, byte for byte. */
export interface RecordedCommand {
  name: string;
  cmd: string;
  rc: number;
  stdout: string;
  stderr: string;
}

/** Read a command fixture: split on the first `# stdout:` line, then the first `# stderr:` after it. */
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
  const stdoutLines = lines.slice(stdoutAt + 1, stderrAt);
  return {
    name,
    cmd: field('cmd'),
    rc: Number(field('rc')),
    stdout: stdoutLines.length === 0 ? '' : `${stdoutLines.join('\n')}\n`,
    stderr: lines.slice(stderrAt + 1).join('\n'),
  };
}

/** One recorded QMP exchange: the request line (none for the greeting), the reply and the events. */
export interface QmpExchange {
  name: string;
  /** The JSON line sent, verbatim; undefined for the greeting. */
  request: string | undefined;
  reply: string;
  events: string[];
}

/** Read a `qmp-*.txt` fixture (one exchange). */
export function readQmpFixture(name: string): QmpExchange {
  const lines = readFileSync(path.join(FIXTURES_DIR, name), 'utf8').split('\n');
  const section = (marker: string): string[] => {
    const start = lines.indexOf(marker);
    if (start < 0) throw new Error(`${name} has no ${marker}`);
    const rest = lines.slice(start + 1);
    const end = rest.findIndex((l) => l.startsWith('# ') && l.endsWith(':'));
    return (end < 0 ? rest : rest.slice(0, end)).filter((l) => l !== '');
  };
  const request = section('# request:')[0];
  return {
    name,
    request: request === undefined || request.startsWith('(none') ? undefined : request,
    reply: section('# reply:')[0] ?? '',
    events: section('# events:'),
  };
}

/** Read a `qmp-transcript-*.txt` fixture: its exchanges in order (events as sent before the reply). */
export function readQmpTranscript(name: string): QmpExchange[] {
  const lines = readFileSync(path.join(FIXTURES_DIR, name), 'utf8').split('\n');
  const out: QmpExchange[] = [];
  let current: QmpExchange | undefined;
  for (const line of lines) {
    const header = /^## (\S+)/.exec(line);
    if (header?.[1]) {
      current = { name: header[1], request: undefined, reply: '', events: [] };
      out.push(current);
    } else if (current && line.startsWith('-> ')) current.request = line.slice(3);
    else if (current && line.startsWith('<- (event) ')) current.events.push(line.slice('<- (event) '.length));
    else if (current && line.startsWith('<- ')) current.reply = line.slice(3);
  }
  return out;
}
