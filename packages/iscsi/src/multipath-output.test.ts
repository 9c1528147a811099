import { describe, expect, it } from 'vitest';
import {
  multipathMessages,
  parseFindMultipaths,
  parseMultipathdDeviceList,
  parseMultipathdStatus,
  stripCondlogPrefix,
  summarizeMultipathOutput,
} from './multipath-output.js';
import { readFixture } from '@berth/testkit/fixtures';

// The outputs below follow KERNEL-MODEL §5 (multipath-tools 0.9.4, print.c and cli_handlers.c):
// multipath-tools is not installed on the recording machine, so only the "no dm" and "no daemon"
// runs are recorded fixtures; the rest is synthesized from the source and marked as such.

describe('condlog messages', () => {
  it('strips the `<secs>.<usecs> | ` prefix of a recorded multipath run', () => {
    const recorded = readFixture('multipath-ll.txt');
    const lines = multipathMessages(recorded.stderr);
    expect(lines[0]).toBe("can't set open fds limit to 1048576/1048576 : Operation not permitted");
    expect(lines.at(-1)).toBe('cannot get kernel dm version');
    expect(summarizeMultipathOutput(recorded.stderr)).toContain('cannot get kernel dm version');
    expect(stripCondlogPrefix('no prefix here')).toBe('no prefix here');
  });

  it('says nothing for the silent failure of multipathd without a daemon (recorded)', () => {
    const recorded = readFixture('multipathd-show-paths-no-daemon.txt');
    expect(recorded.rc).toBe(1);
    expect(summarizeMultipathOutput(recorded.stderr, recorded.stdout)).toBe('');
  });
});

describe('parseMultipathdStatus (synthesized from print.c)', () => {
  it('reads the checker states, the path count and busy', () => {
    const out = 'path checker states:\nup                  2\nfaulty              1\n\npaths: 3\nbusy: False\n';
    expect(parseMultipathdStatus(out)).toEqual({ checkerStates: { up: 2, faulty: 1 }, paths: 3, busy: false });
  });

  it('reads a daemon with no paths', () => {
    expect(parseMultipathdStatus('path checker states:\n\npaths: 0\nbusy: True\n')).toEqual({ checkerStates: {}, paths: 0, busy: true });
  });
});

describe('parseMultipathdDeviceList', () => {
  it('reads one device per line and treats `ok` as none', () => {
    expect(parseMultipathdDeviceList('sda\nsdb\n')).toEqual(['sda', 'sdb']);
    expect(parseMultipathdDeviceList('ok\n')).toEqual([]);
    expect(parseMultipathdDeviceList('')).toEqual([]);
  });
});

describe('parseFindMultipaths', () => {
  it('reads the quoted value `multipath -t` prints in its defaults section', () => {
    const text = [
      'defaults {',
      '\tverbosity 2',
      '\tpolling_interval 5',
      '\tfind_multipaths "strict"',
      '\tuser_friendly_names "no"',
      '}',
      'blacklist {',
      '\tdevnode "!^(sd[a-z]|dasd[a-z]|nvme[0-9])"',
      '\tdevice {',
      '\t\tvendor "SGI"',
      '\t}',
      '}',
      'devices {',
      '\tdevice {',
      '\t\tvendor "NETAPP"',
      '\t\tfind_multipaths "no"',
      '\t}',
      '}',
    ].join('\n');
    expect(parseFindMultipaths(text)).toBe('strict');
  });

  it('reads an unquoted value in a hand-written multipath.conf, skipping comments and other sections', () => {
    const text = '# find_multipaths no\ndefaults {\n  user_friendly_names yes\n  find_multipaths yes   # as RHEL sets it\n}\noverrides {\n  find_multipaths greedy\n}\n';
    expect(parseFindMultipaths(text)).toBe('yes');
  });

  it('is undefined when the defaults do not set it', () => {
    expect(parseFindMultipaths('defaults {\n\tuser_friendly_names no\n}\n')).toBeUndefined();
    expect(parseFindMultipaths('')).toBeUndefined();
  });
});
