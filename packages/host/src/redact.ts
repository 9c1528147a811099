/** The mask that replaces every secret. */
export const REDACTED = '***';

/** Replace every occurrence of each non-empty secret in `text` with `***`. */
export function redact(text: string, secrets: readonly string[]): string {
  // Longest first, so a secret that contains another is masked whole, not half.
  const masks = [...new Set(secrets.filter((s) => s.length > 0))].sort((a, b) => b.length - a.length);
  let out = text;
  for (const secret of masks) out = out.split(secret).join(REDACTED);
  return out;
}

// Arguments made only of these characters read the same unquoted in a shell.
const PLAIN_ARG = /^[A-Za-z0-9_@%+=:,./-]+$/;

/** Quote one argument the way a POSIX shell user would type it (for display only; never executed). */
export function quoteArg(arg: string): string {
  if (PLAIN_ARG.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** The human command line of `file` and `args`, with secrets masked. */
export function formatCommand(file: string, args: readonly string[], secrets: readonly string[]): string {
  const parts = [file, ...args].map((arg) => {
    // Mask before quoting: quoting escapes `'`, so a secret holding one would no longer match after.
    const masked = redact(arg, secrets);
    const rest = masked.split(REDACTED).join('');
    return masked !== arg && (rest === '' || PLAIN_ARG.test(rest)) ? masked : quoteArg(masked);
  });
  // Once more over the whole line, for a secret that spans two arguments.
  return redact(parts.join(' '), secrets);
}
