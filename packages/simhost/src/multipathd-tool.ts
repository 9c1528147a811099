import type { DmMultipath } from './dm-multipath.js';
import { formatConfig } from './multipath-config.js';
import { formatMapTable, formatPathTable, formatStatus, formatTopology, pathWidths } from './multipath-format.js';
import { MULTIPATH_VERSION } from './multipath-tool.js';
import { shortGetopt } from './short-getopt.js';
import type { FaultSet } from './faults.js';
import type { ToolResult } from './tool-protocol.js';

/** `show paths` default format (PRINT_PATH_CHECKER). */
const PRINT_PATH_CHECKER = '%i %d %D %p %t %T %o %C';
/** `show maps` default format (PRINT_MAP_NAMES). */
const PRINT_MAP_NAMES = '%n %d %w';

/** multipathd's CLI keywords (cli.c `load_keys`), aliases sharing a code. */
const KEYS: ReadonlyArray<{ word: string; code: string; param: boolean }> = [
  { word: 'list', code: 'LIST', param: false },
  { word: 'show', code: 'LIST', param: false },
  { word: 'add', code: 'ADD', param: false },
  { word: 'remove', code: 'DEL', param: false },
  { word: 'del', code: 'DEL', param: false },
  { word: 'switch', code: 'SWITCH', param: false },
  { word: 'switchgroup', code: 'SWITCH', param: false },
  { word: 'suspend', code: 'SUSPEND', param: false },
  { word: 'resume', code: 'RESUME', param: false },
  { word: 'reinstate', code: 'REINSTATE', param: false },
  { word: 'fail', code: 'FAIL', param: false },
  { word: 'resize', code: 'RESIZE', param: false },
  { word: 'reset', code: 'RESET', param: false },
  { word: 'reload', code: 'RELOAD', param: false },
  { word: 'forcequeueing', code: 'FORCEQ', param: false },
  { word: 'disablequeueing', code: 'DISABLEQ', param: false },
  { word: 'restorequeueing', code: 'RESTOREQ', param: false },
  { word: 'paths', code: 'PATHS', param: false },
  { word: 'maps', code: 'MAPS', param: false },
  { word: 'multipaths', code: 'MAPS', param: false },
  { word: 'path', code: 'PATH', param: true },
  { word: 'map', code: 'MAP', param: true },
  { word: 'multipath', code: 'MAP', param: true },
  { word: 'group', code: 'GROUP', param: true },
  { word: 'reconfigure', code: 'RECONFIGURE', param: false },
  { word: 'daemon', code: 'DAEMON', param: false },
  { word: 'status', code: 'STATUS', param: false },
  { word: 'stats', code: 'STATS', param: false },
  { word: 'topology', code: 'TOPOLOGY', param: false },
  { word: 'config', code: 'CONFIG', param: false },
  { word: 'blacklist', code: 'BLACKLIST', param: false },
  { word: 'devices', code: 'DEVICES', param: false },
  { word: 'raw', code: 'RAW', param: false },
  { word: 'wildcards', code: 'WILDCARDS', param: false },
  { word: 'quit', code: 'QUIT', param: false },
  { word: 'exit', code: 'QUIT', param: false },
  { word: 'shutdown', code: 'SHUTDOWN', param: false },
  { word: 'format', code: 'FMT', param: true },
  { word: 'json', code: 'JSON', param: false },
  { word: 'local', code: 'LOCAL', param: false },
  { word: 'all', code: 'ALL', param: false },
];

interface Cmd {
  params: Map<string, string>;
}

type Handler = (cmd: Cmd, dm: DmMultipath) => Promise<{ reply: string; error: boolean }>;

const ok = (reply = ''): { reply: string; error: boolean } => ({ reply, error: false });
const fail = (): { reply: string; error: boolean } => ({ reply: '', error: true });
/** convert_dev: multipathd drops a leading `/dev/`. */
const convertDev = (param: string): string => (param.startsWith('/dev/') && param.length > 5 ? param.slice(5) : param);

/** The handlers the model answers (callbacks.c order, which `help` lists). */
const HANDLERS: ReadonlyArray<{ keys: string[]; fn: Handler }> = [
  { keys: ['LIST', 'PATHS'], fn: async (_c, dm) => ok(formatPathTable(dm.pathViews(), PRINT_PATH_CHECKER, true)) },
  { keys: ['LIST', 'PATHS', 'FMT'], fn: async (c, dm) => ok(formatPathTable(dm.pathViews(), c.params.get('FMT') ?? '', true)) },
  { keys: ['LIST', 'PATHS', 'RAW', 'FMT'], fn: async (c, dm) => ok(formatPathTable(dm.pathViews(), c.params.get('FMT') ?? '', false)) },
  { keys: ['LIST', 'MAPS'], fn: async (_c, dm) => ok(formatMapTable(dm.mapViews(true), PRINT_MAP_NAMES, true)) },
  { keys: ['LIST', 'STATUS'], fn: async (_c, dm) => ok(formatStatus(dm.checkerStates())) },
  { keys: ['LIST', 'DAEMON'], fn: async () => ok(`pid ${process.pid} idle\n`) },
  { keys: ['LIST', 'MAPS', 'FMT'], fn: async (c, dm) => ok(formatMapTable(dm.mapViews(true), c.params.get('FMT') ?? '', true)) },
  { keys: ['LIST', 'MAPS', 'RAW', 'FMT'], fn: async (c, dm) => ok(formatMapTable(dm.mapViews(true), c.params.get('FMT') ?? '', false)) },
  { keys: ['LIST', 'MAPS', 'TOPOLOGY'], fn: async (_c, dm) => ok(topology(dm)) },
  { keys: ['LIST', 'TOPOLOGY'], fn: async (_c, dm) => ok(topology(dm)) },
  {
    keys: ['LIST', 'MAP', 'TOPOLOGY'],
    fn: async (c, dm) => {
      const name = dm.findMap(convertDev(c.params.get('MAP') ?? ''), true);
      return name === undefined ? fail() : ok(topology(dm, name));
    },
  },
  { keys: ['LIST', 'CONFIG'], fn: async (_c, dm) => ok(formatConfig(dm.findMultipaths())) },
  {
    keys: ['ADD', 'PATH'],
    fn: async (c, dm) => ((await dm.addPath(convertDev(c.params.get('PATH') ?? ''))) === undefined ? fail() : ok()),
  },
  { keys: ['DEL', 'PATH'], fn: async (c, dm) => ((await dm.delPath(convertDev(c.params.get('PATH') ?? ''))) ? ok() : fail()) },
  {
    keys: ['DEL', 'MAP'],
    fn: async (c, dm) => {
      // dm_get_major_minor() looks the map up by its name (`mapper/<name>` after convert_dev).
      const param = convertDev(c.params.get('MAP') ?? '');
      const name = dm.findMap(param.startsWith('mapper/') ? `/dev/${param}` : param);
      return name !== undefined && (await dm.flushMap(name)) === 'ok' ? ok() : fail();
    },
  },
  {
    keys: ['DEL', 'MAPS'],
    fn: async (_c, dm) => {
      let failed = false;
      for (const name of dm.mapNames()) if ((await dm.flushMap(name)) !== 'ok') failed = true;
      return failed ? fail() : ok();
    },
  },
  {
    keys: ['RECONFIGURE'],
    fn: async (_c, dm) => {
      await dm.configure('daemon');
      return ok();
    },
  },
  {
    keys: ['RECONFIGURE', 'ALL'],
    fn: async (_c, dm) => {
      await dm.configure('daemon', { forceReload: true });
      return ok();
    },
  },
  { keys: ['RESIZE', 'MAP'], fn: async (c, dm) => (dm.resizeMap(convertDev(c.params.get('MAP') ?? '')) ? ok() : fail()) },
  { keys: ['REINSTATE', 'PATH'], fn: async (c, dm) => ((await dm.setPathState(convertDev(c.params.get('PATH') ?? ''), 'active')) ? ok() : fail()) },
  { keys: ['FAIL', 'PATH'], fn: async (c, dm) => ((await dm.setPathState(convertDev(c.params.get('PATH') ?? ''), 'failed')) ? ok() : fail()) },
];

/** What the fake `multipathd` works on. */
export interface MultipathdContext {
  dm: DmMultipath;
  faults: FaultSet;
}

/**
 * The multipathd client (multipathd/main.c, uxclnt.c) and what the daemon answers
 * (uxlsnr.c, cli_handlers.c): the words of argv are one command; the reply is printed, an empty
 * one as `ok`; rc 1 only for `fail` or when multipathd does not run (then nothing is printed).
 * Run without a command it starts multipathd.
 */
export async function runMultipathd(argv: readonly string[], ctx: MultipathdContext): Promise<ToolResult> {
  const { options, operands } = shortGetopt(argv, ':dsv:k::Bniw');
  let command: string | undefined;
  for (const o of options) {
    if (o.ch === '?' || o.ch === ':') return { stdout: '', stderr: `Invalid argument '-${o.opt ?? ''}'\n`, exitCode: 1 };
    if (o.ch === 'k') command = o.arg ?? '';
  }
  if (command === undefined && operands.length > 0) command = operands.map((w) => (w.includes(' ') ? `"${w}"` : w)).join(' ');
  if (command === undefined) {
    // Starting the daemon (as systemd would).
    if (ctx.dm.daemonRunning()) return { stdout: '', stderr: '', exitCode: 1 };
    ctx.faults.setMultipathd(true);
    await ctx.dm.idle();
    return { stdout: '', stderr: '', exitCode: 0 };
  }
  // mpath_connect() fails: uxclnt returns 1 without a word.
  if (!ctx.dm.daemonRunning()) return { stdout: '', stderr: '', exitCode: 1 };
  const reply = await ctx.dm.exclusive(() => answer(command, ctx.dm));
  return { stdout: reply, stderr: '', exitCode: reply === 'fail\n' ? 1 : 0 };
}

/** The daemon's reply to one command line (uxlsnr's `default_reply` for empty ones). */
async function answer(command: string, dm: DmMultipath): Promise<string> {
  const words = splitWords(command);
  const keys: string[] = [];
  const params = new Map<string, string>();
  let wanting: string | undefined;
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    if (wanting !== undefined) {
      params.set(wanting, word);
      wanting = undefined;
      continue;
    }
    const key = KEYS.find((k) => k.word === word);
    if (!key) {
      // get_cmdvec: ESRCH for an unknown last word (help), ENOENT elsewhere (fail).
      return i === words.length - 1 ? help(`${command}: not found\n`) : 'fail\n';
    }
    keys.push(key.code);
    if (key.param) wanting = key.code;
  }
  if (wanting !== undefined) return help(`${command}: Missing argument\n`);
  const handler = HANDLERS.find((h) => h.keys.length === keys.length && h.keys.every((k, i) => k === keys[i]));
  if (!handler) return help(`${command}: Missing argument\n`);
  const { reply, error } = await handler.fn({ params }, dm);
  if (reply !== '') return reply;
  return error ? 'fail\n' : 'ok\n';
}

function topology(dm: DmMultipath, only?: string): string {
  // multipathd pads path fields over every path it monitors.
  const width = pathWidths(dm.pathViews());
  return dm
    .mapViews(true)
    .filter((m) => only === undefined || m.name === only)
    .map((m) => formatTopology(m, width))
    .join('');
}

/** genhelp: the error line, the version, then one line per command. */
function help(first: string): string {
  const word = (code: string): string => {
    const all = KEYS.filter((k) => k.code === code);
    const head = all[0]!;
    return `${all.map((k) => k.word).join('|')}${head.param ? ` $${head.word}` : ''}`;
  };
  return `${first}${MULTIPATH_VERSION}CLI commands reference:\n${HANDLERS.map((h) => ` ${h.keys.map(word).join(' ')}\n`).join('')}`;
}

/** alloc_strvec: words split on blanks, a double-quoted run kept whole. */
function splitWords(command: string): string[] {
  const words: string[] = [];
  const re = /"([^"]*)"|(\S+)/g;
  for (let m = re.exec(command); m !== null; m = re.exec(command)) words.push(m[1] ?? m[2] ?? '');
  return words;
}
