import { describe, expect, it } from 'vitest';
import { formatDevice, formatMs, formatTimings, machinePath, noDifferenceHeadline, operationTimings } from './format.js';

describe('formatTimings', () => {
  it('prints steps in pipeline order with a total', () => {
    expect(formatTimings({ connect: 5, reserve: 2, publish: 1 })).toBe('reserve 2ms, connect 5ms, publish 1ms (total 8ms)');
  });

  it('keeps the journal order when asked', () => {
    expect(formatTimings({ begin_detaching: 3, dispatch: 1 }, true)).toBe('begin_detaching 3ms, dispatch 1ms (total 4ms)');
  });

  it('prints a dash when nothing was timed', () => {
    expect(formatTimings({})).toBe('-');
  });

  it('switches to seconds past one second', () => {
    expect(formatMs(1234)).toBe('1.23s');
  });
});

describe('operationTimings', () => {
  it('takes forward steps from the journal in the order they ran', () => {
    const step = (seq: number, name: string, phase: 'do' | 'undo', durationMs: number | null) => ({
      seq,
      name,
      phase,
      state: 'done' as const,
      startedAt: '',
      endedAt: null,
      durationMs,
      error: null,
      data: null,
    });
    expect(operationTimings({ steps: [step(2, 'connect', 'do', 7), step(1, 'reserve', 'do', 2), step(3, 'connect', 'undo', 4), step(4, 'publish', 'do', null)] })).toEqual({
      reserve: 2,
      connect: 7,
    });
  });
});

describe('noDifferenceHeadline', () => {
  it('says they agree only when nothing went unchecked', () => {
    expect(noDifferenceHeadline(0, 'this host')).toBe("No differences: the database, the backends' exports and this host agree.");
    expect(noDifferenceHeadline(1, 'host h1')).toMatch(/^No differences in what could be checked; 1 part of host h1 could not be/);
    expect(noDifferenceHeadline(2, 'this host')).not.toMatch(/agree/);
  });
});

describe('machinePath', () => {
  it('puts a device connected on another root (the simulated host) under that root, and leaves the machine\'s own as it is', () => {
    const device = { path: '/dev/sda', type: 'block' as const };
    expect(machinePath({ device, hostRoot: '/var/lib/berth/simhost/' })).toBe('/var/lib/berth/simhost/dev/sda');
    expect(machinePath({ device, hostRoot: '/' })).toBe('/dev/sda');
    expect(machinePath({ device, hostRoot: null })).toBe('/dev/sda');
    expect(machinePath({ device: null, hostRoot: '/x' })).toBe('-');
    expect(formatDevice({ device, hostRoot: '/r', publishedPath: '/dev/berth/v1' })).toBe('/r/dev/sda (/dev/berth/v1)');
  });
});
