/**
 * One iscsiadm record (node, discovery or iface) as `key → value`; `<empty>` reads as `''`. A set
 * password reads as `********` unless the record was shown with `--show`.
 */
export type IscsiRecord = Readonly<Record<string, string>>;

/** What iscsiadm prints in place of a set password without `--show`. */
export const MASKED_SECRET = '********';

const EMPTY = '<empty>';
const BEGIN = /^# BEGIN RECORD\b/;
const END = /^# END RECORD\b/;

function parseLine(line: string): [string, string] | undefined {
  const at = line.indexOf(' = ');
  if (at > 0) {
    const value = line.slice(at + 3).trim();
    return [line.slice(0, at).trim(), value === EMPTY ? '' : value];
  }
  // A value iscsiadm left empty without the `<empty>` marker.
  if (line.endsWith(' =')) return [line.slice(0, -2).trim(), ''];
  return undefined;
}

/**
 * Parse every record in iscsiadm's output (`# BEGIN RECORD 2.1.8` … `# END RECORD`), in order.
 * Key lines outside a BEGIN/END pair (a filtered listing) make one record of their own.
 */
export function parseRecords(stdout: string): IscsiRecord[] {
  const records: IscsiRecord[] = [];
  let current: Record<string, string> | undefined;
  const flush = (): void => {
    if (current !== undefined && Object.keys(current).length > 0) records.push(current);
    current = undefined;
  };
  for (const raw of stdout.split('\n')) {
    const line = raw.trim();
    if (BEGIN.test(line)) {
      flush();
      current = Object.create(null) as Record<string, string>;
      continue;
    }
    if (END.test(line)) {
      flush();
      continue;
    }
    if (line === '' || line.startsWith('#')) continue;
    const entry = parseLine(line);
    if (entry === undefined) continue;
    current ??= Object.create(null) as Record<string, string>;
    current[entry[0]] = entry[1];
  }
  flush();
  return records;
}

/** Parse output that holds one record; `undefined` when it holds none. */
export function parseRecord(stdout: string): IscsiRecord | undefined {
  return parseRecords(stdout)[0];
}

/** Whether a record value is a password iscsiadm hid (`********`). */
export function isMaskedSecret(value: string | undefined): boolean {
  return value === MASKED_SECRET;
}
