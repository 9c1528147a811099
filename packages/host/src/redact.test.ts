import { describe, expect, it } from 'vitest';
import { formatCommand, quoteArg, redact } from './redact.js';

describe('redact', () => {
  it('masks every occurrence of every secret, longest first', () => {
    expect(redact('user=alice pass=s3cret again s3cret', ['s3cret'])).toBe('user=alice pass=*** again ***');
    expect(redact('abcdef', ['abc', 'abcdef'])).toBe('***');
  });

  it('ignores empty secrets', () => {
    expect(redact('text', ['', 'x'])).toBe('te***t');
    expect(redact('text', [''])).toBe('text');
  });
});

describe('formatCommand', () => {
  it('quotes arguments a shell would split, and leaves plain ones alone', () => {
    expect(formatCommand('iscsiadm', ['-m', 'node', '-T', 'iqn.2010-10.org:vol 1'], [])).toBe(
      "iscsiadm -m node -T 'iqn.2010-10.org:vol 1'",
    );
    expect(quoteArg("it's")).toBe(`'it'\\''s'`);
    expect(quoteArg('')).toBe("''");
  });

  it('masks secrets, even ones holding a quote', () => {
    const line = formatCommand('iscsiadm', ['-n', 'node.session.auth.password', '-v', "pa'ss word"], ["pa'ss word"]);
    expect(line).toBe('iscsiadm -n node.session.auth.password -v ***');
    expect(formatCommand('tool', ['--password=hunter2'], ['hunter2'])).toBe('tool --password=***');
    expect(formatCommand('tool', ['a b hunter2'], ['hunter2'])).toBe("tool 'a b ***'");
  });
});
