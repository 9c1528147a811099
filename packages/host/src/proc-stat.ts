import { readdirSync, readFileSync } from 'node:fs';

/** What berth reads of `/proc/<pid>/stat`: the state (field 3) and the start time (field 22, clock ticks since boot). */
export interface ProcStat {
  state: string;
  startTicks: string;
}

/**
 * Parse the text of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
 * parentheses: the fields after it follow its last ')'.
 */
export function parseProcStat(text: string): ProcStat | undefined {
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0];
  const startTicks = fields[19];
  if (state === undefined || startTicks === undefined) return undefined;
  return { state, startTicks };
}

/** The start time of a process that still runs: undefined for a zombie (or one being reaped). */
export function liveStartTicks(stat: ProcStat | undefined): string | undefined {
  return stat === undefined || stat.state === 'Z' || stat.state === 'X' ? undefined : stat.startTicks;
}

/**
 * `/proc/<pid>/stat` read synchronously (berth reads it from its exit hook too): undefined when
 * the process is gone, `'unreadable'` when /proc could not be read for another reason (EMFILE).
 */
export function readProcStatSync(pid: number): ProcStat | undefined | 'unreadable' {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === 'ENOENT' || code === 'ESRCH' ? undefined : 'unreadable';
  }
  return parseProcStat(text);
}

/**
 * Whether process `pid` runs — not gone, not a zombie (`kill(pid, 0)` succeeds on a zombie: one
 * whose parent never reaps it would count as alive for good) — read synchronously from
 * `/proc/<pid>/stat`; undefined when /proc cannot tell (another error than the process being gone).
 */
export function processRunsSync(pid: number): boolean | undefined {
  const stat = readProcStatSync(pid);
  return stat === 'unreadable' ? undefined : liveStartTicks(stat) !== undefined;
}

/**
 * Whether process `pid` runs: `processRunsSync`, and where /proc cannot tell, whether it can be
 * signalled (`kill(pid, 0)`; EPERM: it exists, as another user's).
 */
export function processAliveSync(pid: number): boolean {
  const known = processRunsSync(pid);
  if (known !== undefined) return known;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The start time of a live process (not a zombie), read synchronously; undefined when gone or unreadable. */
export function processStartTicksSync(pid: number): string | undefined {
  const stat = readProcStatSync(pid);
  return stat === 'unreadable' ? undefined : liveStartTicks(stat);
}

/**
 * Every process's pid and argv, from `/proc/<pid>/cmdline` (read synchronously; a zombie's, or one
 * gone meanwhile, is empty and left out). For the rare questions no pid answers: which process
 * stands for a dead berth's commands, which daemon a dead starter left.
 */
export function* processCommandLines(): Generator<{ pid: number; argv: string[] }> {
  let names: string[];
  try {
    names = readdirSync('/proc');
  } catch {
    return;
  }
  for (const name of names) {
    const first = name.charCodeAt(0);
    if (first < 48 || first > 57) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (cmdline === '') continue;
    yield { pid: Number(name), argv: cmdline.replace(/\0$/, '').split('\0') };
  }
}
