/** The error an iscsiadm run reported on stderr, parsed. */
export interface IscsiadmMessages {
  /** Every `iscsiadm: <text>` line, without the prefix, in order. */
  messages: string[];
  /** The daemon's error from `initiator reported error (N - msg)`, when iscsiadm printed one. */
  reported?: { exitCode: number; message: string };
  /** Lines from other programs (systemctl, libkmod, `iSCSI ERROR: …` from idbm), in order. */
  other: string[];
}

const PREFIX = 'iscsiadm: ';
const REPORTED = /^initiator reported error \((\d+) - (.*)\)$/;

/** Parse iscsiadm's stderr: its own `iscsiadm: …` lines, the daemon's reported error, the rest. */
export function parseIscsiadmMessages(stderr: string): IscsiadmMessages {
  const messages: string[] = [];
  const other: string[] = [];
  let reported: IscsiadmMessages['reported'];
  for (const raw of stderr.split('\n')) {
    const line = raw.trimEnd();
    if (line === '') continue;
    if (!line.startsWith(PREFIX)) {
      other.push(line);
      continue;
    }
    const text = line.slice(PREFIX.length);
    messages.push(text);
    const match = REPORTED.exec(text);
    if (match) reported = { exitCode: Number(match[1]), message: match[2] ?? '' };
  }
  return reported === undefined ? { messages, other } : { messages, reported, other };
}

/**
 * The lines worth showing a user: iscsiadm's own messages, or, when it printed none, the other
 * lines (idbm writes `iSCSI ERROR: …` without the prefix).
 */
export function summarizeIscsiadmStderr(stderr: string, maxLines = 3): string {
  const parsed = parseIscsiadmMessages(stderr);
  const lines = parsed.messages.length > 0 ? parsed.messages : parsed.other;
  return lines.slice(-maxLines).join(' | ');
}
