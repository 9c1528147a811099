import { describe, expect, it } from 'vitest';
import { renderFields, renderTable } from './table.js';

describe('renderTable', () => {
  it('aligns columns under upper-case headings', () => {
    const text = renderTable(
      [
        { header: 'name', get: (r: { name: string; size: string }) => r.name },
        { header: 'size', get: (r: { name: string; size: string }) => r.size },
      ],
      [
        { name: 'data1', size: '1 GiB' },
        { name: 'a-much-longer-name', size: '512 MiB' },
      ],
    );
    expect(text.split('\n')).toEqual(['NAME                SIZE', 'data1               1 GiB', 'a-much-longer-name  512 MiB']);
  });

  it('keeps a multi-line cell on one line', () => {
    const text = renderTable([{ header: 'error', get: (r: string) => r }], ['first\n  second']);
    expect(text.split('\n')).toEqual(['ERROR', 'first second']);
  });
});

describe('renderFields', () => {
  it('aligns values after their labels', () => {
    expect(renderFields([['device', '/dev/loop3'], ['link', '/dev/berth/x']], '  ')).toBe('  device:  /dev/loop3\n  link:    /dev/berth/x');
  });
});

describe('renderTable widths', () => {
  interface Row {
    id: string;
    detail: string;
    extra: string;
  }
  const columns = [
    { header: 'id', get: (r: Row) => r.id },
    { header: 'detail', get: (r: Row) => r.detail, shrink: true },
    { header: 'extra', get: (r: Row) => r.extra, wide: true },
  ];
  const rows: Row[] = [{ id: 'a'.repeat(36), detail: 'd'.repeat(120), extra: 'only when wide' }];

  it('fits 100 columns by default: wide columns left out, shrinkable ones cut with …', () => {
    const lines = renderTable(columns, rows).split('\n');
    expect(Math.max(...lines.map((l) => l.length))).toBeLessThanOrEqual(100);
    expect(lines[0]).toBe(`ID${' '.repeat(36)}DETAIL`);
    expect(lines[1]).toBe(`${'a'.repeat(36)}  ${'d'.repeat(61)}…`);
  });

  it('two shrinkable columns of one width still fit (they are narrowed in turn, not forever)', () => {
    const two = [
      { header: 'a', get: (r: Row) => r.id, shrink: true },
      { header: 'b', get: (r: Row) => r.detail, shrink: true },
    ];
    // What hung `berth reconcile` with a difference whose resource and fix came out equally wide.
    const lines = renderTable(two, [{ id: 'x'.repeat(70), detail: 'y'.repeat(90), extra: '' }]).split('\n');
    expect(lines[1]).toBe(`${'x'.repeat(48)}…  ${'y'.repeat(48)}…`);
  });

  it('shows every column, uncut, when wide', () => {
    const lines = renderTable(columns, rows, { wide: true }).split('\n');
    expect(lines[1]).toBe(`${'a'.repeat(36)}  ${'d'.repeat(120)}  only when wide`);
  });
});

describe('`berth reconcile` table', () => {
  it('a failed fix\'s long result is cut too: the resource and the fix stay readable within 100 columns', async () => {
    const { differenceColumns } = await import('./commands/reconcile.js');
    const failed = {
      kind: 'attachment_stuck',
      resource: 'attachment 0b6f1c2e-4d5a-4c39-9a51-2f7f1d8e6a10',
      volumeId: null,
      attachmentId: null,
      detail: 'stuck',
      fix: 'none',
      fixDetail: 'finish it as `berth detach xv1 --force`',
      state: 'failed',
      result: `the transport xplug is not installed: ${'x'.repeat(120)}`,
      errorCode: 'PLUGIN_ERROR',
    } as const;
    const lines = renderTable(differenceColumns, [failed]).split('\n');
    expect(Math.max(...lines.map((line) => line.length))).toBeLessThanOrEqual(100);
    // Before, only the resource and the fix shrank: "attachment …", "finish it a…" (`-o wide`: uncut).
    expect(lines[1]).toContain('attachment 0b6f1c2e');
    expect(lines[1]).toContain('finish it as `berth detac');
  });
});

describe('`berth reconcile` exit code', () => {
  it('0 when everything was looked at or what was not cannot be; a failed look\'s code; a failed fix\'s code first', async () => {
    const { reconcileExitCode } = await import('./commands/reconcile.js');
    const cannot = { kind: 'transport', name: 'xplug', reason: 'it cannot list its devices', errorCode: null } as const;
    const brokeListing = { kind: 'transport', name: 'loop', reason: 'listing its devices failed: losetup timed out', errorCode: 'TIMEOUT' } as const;
    const failedFix = { kind: 'attachment_stuck', resource: 'a', volumeId: null, attachmentId: null, detail: 'd', fix: 'none', fixDetail: 'f', state: 'failed', result: 'r', errorCode: 'DRIVER_ERROR' } as const;
    expect(reconcileExitCode({ differences: [], unchecked: [] })).toBe(0);
    // A plugin that cannot list is listed every run: a code for it would teach scripts to ignore the code.
    expect(reconcileExitCode({ differences: [], unchecked: [cannot] })).toBe(0);
    expect(reconcileExitCode({ differences: [], unchecked: [cannot, brokeListing] })).toBe(10);
    expect(reconcileExitCode({ differences: [failedFix], unchecked: [brokeListing] })).toBe(15);
    expect(reconcileExitCode({ differences: [], unchecked: [{ ...brokeListing, errorCode: 'SOMETHING_NEW' }] })).toBe(1);
    // An older server's report: no errorCode at all.
    const { errorCode: _none, ...older } = brokeListing;
    expect(reconcileExitCode({ differences: [], unchecked: [older as typeof brokeListing] })).toBe(0);
  });
});
