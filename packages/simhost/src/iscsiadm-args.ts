/** iscsiadm's command line, parsed as glibc getopt_long and iscsiadm 2.1.8's main() do. */

const SHORT = 'RlDVhm:a:b:c:C:p:P:T:H:i:I:U:k:L:d:r:n:v:o:sSt:ux:A:W';

const LONG: Readonly<Record<string, { ch: string; arg: boolean }>> = {
  mode: { ch: 'm', arg: true },
  portal: { ch: 'p', arg: true },
  targetname: { ch: 'T', arg: true },
  interface: { ch: 'I', arg: true },
  op: { ch: 'o', arg: true },
  type: { ch: 't', arg: true },
  name: { ch: 'n', arg: true },
  value: { ch: 'v', arg: true },
  host: { ch: 'H', arg: true },
  sid: { ch: 'r', arg: true },
  rescan: { ch: 'R', arg: false },
  print: { ch: 'P', arg: true },
  discover: { ch: 'D', arg: false },
  login: { ch: 'l', arg: false },
  loginall: { ch: 'L', arg: true },
  logout: { ch: 'u', arg: false },
  logoutall: { ch: 'U', arg: true },
  stats: { ch: 's', arg: false },
  killiscsid: { ch: 'k', arg: true },
  debug: { ch: 'd', arg: true },
  show: { ch: 'S', arg: false },
  version: { ch: 'V', arg: false },
  help: { ch: 'h', arg: false },
  submode: { ch: 'C', arg: true },
  ip: { ch: 'a', arg: true },
  packetsize: { ch: 'b', arg: true },
  count: { ch: 'c', arg: true },
  interval: { ch: 'i', arg: true },
  index: { ch: 'x', arg: true },
  portal_type: { ch: 'A', arg: true },
  no_wait: { ch: 'W', arg: false },
};

/** One option as getopt returned it. */
export interface ParsedOption {
  ch: string;
  arg?: string;
}

/** getopt's outcome: the options in order, or the error line it printed. */
export type GetoptResult = { ok: true; options: ParsedOption[] } | { ok: false; message: string };

/** Run getopt_long over `argv` with iscsiadm's option tables. */
export function getopt(argv: readonly string[]): GetoptResult {
  const options: ParsedOption[] = [];
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (word === '--') break;
    if (word.startsWith('--')) {
      const eq = word.indexOf('=');
      const name = eq >= 0 ? word.slice(2, eq) : word.slice(2);
      const exact = LONG[name];
      const candidates = exact ? [name] : Object.keys(LONG).filter((k) => k.startsWith(name));
      if (candidates.length === 0) return { ok: false, message: `iscsiadm: unrecognized option '${word}'` };
      if (candidates.length > 1) return { ok: false, message: `iscsiadm: option '${word}' is ambiguous` };
      const full = candidates[0]!;
      const spec = LONG[full]!;
      if (spec.arg) {
        let value: string | undefined = eq >= 0 ? word.slice(eq + 1) : argv[++i];
        if (value === undefined) return { ok: false, message: `iscsiadm: option '--${full}' requires an argument` };
        options.push({ ch: spec.ch, arg: value });
        value = undefined;
      } else {
        if (eq >= 0) return { ok: false, message: `iscsiadm: option '--${full}' doesn't allow an argument` };
        options.push({ ch: spec.ch });
      }
      continue;
    }
    if (word.startsWith('-') && word.length > 1) {
      for (let j = 1; j < word.length; j++) {
        const ch = word[j]!;
        const at = SHORT.indexOf(ch);
        if (at < 0 || ch === ':') return { ok: false, message: `iscsiadm: invalid option -- '${ch}'` };
        if (SHORT[at + 1] === ':') {
          const rest = word.slice(j + 1);
          const value = rest !== '' ? rest : argv[++i];
          if (value === undefined) return { ok: false, message: `iscsiadm: option requires an argument -- '${ch}'` };
          options.push({ ch, arg: value });
          break;
        }
        options.push({ ch });
      }
    }
    // Words that are not options are ignored, as getopt leaves them for main() which never looks.
  }
  return { ok: true, options };
}

/** The modes, in iscsiadm's enum order, with the options each allows (verify_mode_params). */
export const MODES: Readonly<Record<string, { name: string; allowed: string; skipM: boolean }>> = {
  discovery: { name: 'discovery', allowed: 'DSIPdmntplov', skipM: false },
  discoverydb: { name: 'discovery', allowed: 'DSIPdmntplov', skipM: false },
  node: { name: 'node', allowed: 'RsPIdmlSonvupTULW', skipM: false },
  session: { name: 'session', allowed: 'PiRdrmusonuSv', skipM: true },
  host: { name: 'host', allowed: 'CHdmPotnvxA', skipM: false },
  iface: { name: 'iface', allowed: 'HIdnvmPoCabci', skipM: false },
  fw: { name: 'fw', allowed: 'dmlWnv', skipM: false },
};

/** `-o` values and their bits (usr/iscsiadm.c). */
export const OPS: Readonly<Record<string, number>> = {
  new: 0x1,
  delete: 0x2,
  update: 0x4,
  show: 0x8,
  nonpersistent: 0x10,
  apply: 0x20,
  applyall: 0x40,
  login: 0x80,
  logout: 0x100,
};

/** Bits of `OPS`, by name. */
export const OP = { NEW: 0x1, DELETE: 0x2, UPDATE: 0x4, SHOW: 0x8, NONPERSISTENT: 0x10 } as const;
