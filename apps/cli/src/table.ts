/** One column of a table: its heading and how to read a cell from a row. */
export interface Column<Row> {
  header: string;
  get: (row: Row) => string;
}

/** Render rows as an aligned plain-text table (heading line first); columns are two spaces apart. */
export function renderTable<Row>(columns: ReadonlyArray<Column<Row>>, rows: readonly Row[]): string {
  const cells = rows.map((row) => columns.map((column) => oneLine(column.get(row))));
  const headers = columns.map((column) => column.header.toUpperCase());
  const widths = headers.map((header, i) => Math.max(header.length, ...cells.map((line) => (line[i] ?? '').length)));
  const format = (line: readonly string[]): string =>
    line
      .map((cell, i) => (i === line.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [format(headers), ...cells.map(format)].join('\n');
}

/** Render label/value pairs, labels aligned (`device:   /dev/loop3`). */
export function renderFields(fields: ReadonlyArray<readonly [string, string]>, indent = ''): string {
  const width = Math.max(0, ...fields.map(([label]) => label.length + 1));
  return fields.map(([label, value]) => `${indent}${`${label}:`.padEnd(width)}  ${oneLine(value)}`).join('\n');
}

// A newline inside a cell would break the table's alignment; errors can carry several lines.
function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ');
}
