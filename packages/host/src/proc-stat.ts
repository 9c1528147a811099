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
