import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '@berth/core';
import { createHostServices } from '@berth/host';
import { mapStillThere, waitForMapGone, type MapHost, type MultipathMap } from './multipath-map.js';

const MAP: MultipathMap = { dm: 'dm-0', name: '360000000000000000e00000000010001', multipathId: '360000000000000000e00000000010001' };
let root: string;

beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'berth-mp-map-'));
  await mkdir(path.join(root, 'dev'), { recursive: true });
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** `dm-0` in sysfs with `uuid` (none: no `dm/uuid` file, as while the kernel removes it), and its node. */
async function dm0(uuid: string | undefined): Promise<void> {
  await mkdir(path.join(root, 'sys/block/dm-0/dm'), { recursive: true });
  if (uuid !== undefined) await writeFile(path.join(root, 'sys/block/dm-0/dm/uuid'), `${uuid}\n`);
  await writeFile(path.join(root, 'dev/dm-0'), '');
}

describe("a multipath map's removal when device-mapper gives its minor to another map", () => {
  it('counts the map there by its WWID, not by dm-N alone', async () => {
    const { fs } = createHostServices({ root });
    await dm0(`mpath-${MAP.multipathId}`);
    expect(await mapStillThere(fs, MAP)).toBe(true);
    // Another volume's map made right after the removal got the freed minor.
    await writeFile(path.join(root, 'sys/block/dm-0/dm/uuid'), 'mpath-360000000000000000e00000000010002\n');
    expect(await mapStillThere(fs, MAP)).toBe(false);
    // Any other dm device (LVM) at that minor, likewise.
    await writeFile(path.join(root, 'sys/block/dm-0/dm/uuid'), 'LVM-abc\n');
    expect(await mapStillThere(fs, MAP)).toBe(false);
    await rm(path.join(root, 'sys/block/dm-0/dm/uuid'));
    expect(await mapStillThere(fs, MAP)).toBe(true);
    await rm(path.join(root, 'sys/block/dm-0'), { recursive: true });
    expect(await mapStillThere(fs, MAP)).toBe(true);
    await rm(path.join(root, 'dev/dm-0'));
    expect(await mapStillThere(fs, MAP)).toBe(false);
  });

  it('ends the wait for it at once, not at the deadline', async () => {
    const services = createHostServices({ root });
    await dm0('mpath-360000000000000000e00000000010002');
    const host = { fs: services.fs, waiter: services.waiter, logger: silentLogger, commandTimeoutMs: 1_000 } as unknown as MapHost;
    const started = Date.now();
    await waitForMapGone(host, MAP, 2_000, undefined);
    expect(Date.now() - started).toBeLessThan(2_000);
  });
});
