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
