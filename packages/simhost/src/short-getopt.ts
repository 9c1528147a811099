/** One option as glibc's getopt returns it: the character, or `?`/`:` for an unknown switch or a missing argument. */
export interface ShortOption {
  ch: string;
  arg?: string;
  /** The offending character for `?` and `:`. */
  opt?: string;
}

/**
 * glibc `getopt(argc, argv, optstring)` for short options, with its argument permutation
 * (operands may come before options) and `--`: `x:` takes an argument (attached or the next
 * word), `x::` an optional attached one. A leading `:` makes a missing argument `:`.
 */
export function shortGetopt(argv: readonly string[], optstring: string): { options: ShortOption[]; operands: string[] } {
  const spec = optstring.startsWith(':') ? optstring.slice(1) : optstring;
  const takes = (c: string): 0 | 1 | 2 => {
    const i = spec.indexOf(c);
    if (i < 0 || c === ':') return 0;
    if (spec[i + 1] !== ':') return 0;
    return spec[i + 2] === ':' ? 2 : 1;
  };
  const known = (c: string): boolean => c !== ':' && spec.includes(c);
  const options: ShortOption[] = [];
  const operands: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (word === '--') {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (!word.startsWith('-') || word === '-') {
      operands.push(word);
      continue;
    }
    for (let j = 1; j < word.length; j++) {
      const c = word[j]!;
      if (!known(c)) {
        options.push({ ch: '?', opt: c });
        continue;
      }
      const mode = takes(c);
      if (mode === 0) {
        options.push({ ch: c });
        continue;
      }
      const rest = word.slice(j + 1);
      if (mode === 2) {
        options.push(rest === '' ? { ch: c } : { ch: c, arg: rest });
      } else if (rest !== '') {
        options.push({ ch: c, arg: rest });
      } else if (i + 1 < argv.length) {
        options.push({ ch: c, arg: argv[i + 1]! });
        i++;
      } else {
        options.push({ ch: ':', opt: c });
      }
      break;
    }
  }
  return { options, operands };
}
