/**
 * Parsers for what multipath-tools 0.9.4 prints (KERNEL-MODEL §5): `multipathd show status`,
 * `multipathd show paths raw format %d`, the condlog prefix of their messages, and the
 * `find_multipaths` setting of a multipath.conf or of `multipath -t`.
 */

// condlog prints `<mono-secs>.<usecs> | ` before each message at verbosity >= 2.
const CONDLOG_PREFIX = /^\s*\d+\.\d+\s*\|\s?/;

/** A multipath/multipathd message line without its `<secs>.<usecs> | ` timestamp. */
export function stripCondlogPrefix(line: string): string {
  return line.replace(CONDLOG_PREFIX, '');
}

/** The non-empty message lines of multipath's or multipathd's output, timestamps stripped. */
export function multipathMessages(text: string): string[] {
  return text
    .split('\n')
    .map((l) => stripCondlogPrefix(l).trim())
    .filter((l) => l !== '');
}

/** The last few message lines of a failed run, joined for an error message. */
export function summarizeMultipathOutput(stderr: string, stdout = '', maxLines = 3): string {
  const lines = multipathMessages(stderr);
  return (lines.length > 0 ? lines : multipathMessages(stdout)).slice(-maxLines).join(' | ');
}

/** `multipathd show status`, parsed. */
export interface MultipathdStatus {
  /** Path checker state → how many paths are in it (`up`, `down`, `ghost`, `faulty`, …). */
  checkerStates: Record<string, number>;
  /** `paths: N`, when printed. */
  paths?: number;
  /** `busy: True|False`, when printed. */
  busy?: boolean;
}

/**
 * Parse `multipathd show status`: `path checker states:`, one `<state padded to 20> <count>` line
 * per state present, a blank line, `paths: N` and `busy: False`.
 */
export function parseMultipathdStatus(stdout: string): MultipathdStatus {
  const status: MultipathdStatus = { checkerStates: {} };
  let inStates = false;
  for (const raw of stdout.split('\n')) {
    const line = raw.trim();
    if (line === '') {
      inStates = false;
      continue;
    }
    if (/^path checker states:?$/i.test(line)) {
      inStates = true;
      continue;
    }
    const paths = /^paths:\s*(\d+)$/i.exec(line);
    if (paths) {
      status.paths = Number(paths[1]);
      continue;
    }
    const busy = /^busy:\s*(\w+)$/i.exec(line);
    if (busy) {
      status.busy = (busy[1] ?? '').toLowerCase() === 'true';
      continue;
    }
    const state = /^(\S+)\s+(\d+)$/.exec(line);
    if (inStates && state?.[1] !== undefined) status.checkerStates[state[1]] = Number(state[2]);
  }
  return status;
}

/**
 * The device names of `multipathd show paths raw format %d` (or any one-name-per-line raw list):
 * one per line, no header; multipathd prints `ok` for an empty reply, which is no device.
 */
export function parseMultipathdDeviceList(stdout: string): string[] {
  const text = stdout.trim();
  if (text === '' || text === 'ok') return [];
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => /^[A-Za-z0-9][A-Za-z0-9_:.+-]*$/.test(l));
}

/**
 * The `find_multipaths` value of the `defaults` section of a multipath.conf text, or of what
 * `multipath -t` prints (the same syntax); `undefined` when the section does not set it.
 * Values may be quoted (`"strict"`); comments start with `#` or `!`.
 */
export function parseFindMultipaths(configText: string): string | undefined {
  const stack: string[] = [];
  let found: string | undefined;
  for (const raw of configText.split('\n')) {
    const line = raw.replace(/\s[#!].*$/, '').replace(/^[#!].*$/, '').trim();
    if (line === '') continue;
    const open = /^(\S+)\s*\{$/.exec(line);
    if (open?.[1] !== undefined) {
      stack.push(open[1]);
      continue;
    }
    if (line === '}') {
      stack.pop();
      continue;
    }
    if (stack.length !== 1 || stack[0] !== 'defaults') continue;
    const kv = /^find_multipaths\s+("([^"]*)"|(\S+))$/.exec(line);
    // The last setting wins, as multipath's config parser keeps overwriting the value.
    if (kv) found = (kv[2] ?? kv[3] ?? '').trim();
  }
  return found;
}

/** What multipathd does with a new path under each `find_multipaths` value (multipath.conf(5), 0.9.4). */
export const FIND_MULTIPATHS_POLICIES: Readonly<Record<string, string>> = {
  strict: 'a map is made only for wwids listed in /etc/multipath/wwids (`multipath -a WWID` adds one)',
  yes: 'a map is made for a wwid listed in /etc/multipath/wwids, or once a second path with the same wwid appears',
  on: 'same as yes',
  smart: 'like yes, and a single new path waits find_multipaths_timeout for a second one',
  greedy: 'every path that is not blacklisted gets a map',
  no: 'every path that is not blacklisted gets a map',
  off: 'same as no',
};
