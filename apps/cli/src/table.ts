/** One column of a table: its heading and how to read a cell from a row. */
export interface Column<Row> {
  header: string;
  get: (row: Row) => string;
  /** Shown only in the wide form (`-o wide`). */
  wide?: boolean;
  /** May be cut (ending in `…`) so that the table fits its width; never in the wide form. */
  shrink?: boolean;
}

/** How wide a table may be unless `-o wide` is given: a terminal of 100 columns shows it unwrapped. */
export const TABLE_WIDTH = 100;

/** Options of `renderTable`. */
export interface TableOptions {
  /** Every column, nothing cut (`-o wide`). */
  wide?: boolean;
  /** The width to fit when not wide (default `TABLE_WIDTH`). */
  width?: number;
}

// Shrinkable columns keep at least their heading, and at least this many characters.
const MIN_SHRUNK = 12;

/**
 * Render rows as an aligned plain-text table (heading line first); columns are two spaces apart.
 * Unless `wide`, the `wide` columns are left out and the `shrink` columns are cut to fit `width`.
 */
export function renderTable<Row>(columns: ReadonlyArray<Column<Row>>, rows: readonly Row[], options: TableOptions = {}): string {
  const shown = options.wide === true ? columns : columns.filter((column) => column.wide !== true);
  const cells = rows.map((row) => shown.map((column) => oneLine(column.get(row))));
  const headers = shown.map((column) => column.header.toUpperCase());
  const widths = headers.map((header, i) => Math.max(header.length, ...cells.map((line) => (line[i] ?? '').length)));
  if (options.wide !== true) fit(widths, shown.map((column, i) => (column.shrink === true ? Math.max(MIN_SHRUNK, headers[i]?.length ?? 0) : undefined)), options.width ?? TABLE_WIDTH);
  const format = (line: readonly string[]): string =>
    line
      .map((cell, i) => {
        const width = widths[i] ?? 0;
        const cut = cell.length > width ? `${cell.slice(0, Math.max(0, width - 1))}…` : cell;
        return i === line.length - 1 ? cut : cut.padEnd(width);
      })
      .join('  ')
      .trimEnd();
  return [format(headers), ...cells.map(format)].join('\n');
}

// Narrow the widest shrinkable column (down to its minimum) until the row fits `width`.
function fit(widths: number[], minimums: ReadonlyArray<number | undefined>, width: number): void {
  for (;;) {
    const total = widths.reduce((sum, w) => sum + w, 0) + 2 * Math.max(0, widths.length - 1);
    if (total <= width) return;
    let widest = -1;
    for (let i = 0; i < widths.length; i++) {
      const min = minimums[i];
      if (min !== undefined && (widths[i] ?? 0) > min && (widest === -1 || (widths[i] ?? 0) > (widths[widest] ?? 0))) widest = i;
    }
    if (widest === -1) return;
    const others = widths.filter((_, i) => i !== widest && minimums[i] !== undefined && (widths[i] ?? 0) > (minimums[i] ?? 0));
    const nextWidest = Math.max(minimums[widest] ?? 0, ...others);
    const current = widths[widest] ?? 0;
    // Two columns equally wide: narrow this one by one, the other next (else nothing changes, forever).
    widths[widest] = nextWidest >= current ? current - 1 : Math.max(nextWidest, current - (total - width));
  }
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
