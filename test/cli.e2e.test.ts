// The built `berth` binary, run as a user runs it, on real loop devices: the main journey with
// --json checked at every step, and bad input that must fail clearly and change nothing.
import { existsSync } from 'node:fs';
import { lstat, readFile, readdir, realpath, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { EXIT_CODES } from '@berth/core';
import { LOOP_DETACH_PROGRAM } from '@berth/host';
import type { Attachment, Operation, OperationOutcome, Volume } from '@berth/core';
import { errorBody, makeSandbox, type BerthSandbox } from './support/berth-cli.js';
import { sweepOrphanedSandboxes } from './support/orphans.js';
import { loopDevicesBacking, removeBerthLinks } from './support/loop-devices.js';

const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
// Set here, not only in vitest.config.ts, so the suite holds when run from another directory.
const TEST_TIMEOUT_MS = 120_000;
const HOOK_TIMEOUT_MS = 60_000;

// Runs killed before their afterEach (a CI timeout) leave sandboxes behind: clean them first.
beforeAll(async () => {
  if (isRoot) await sweepOrphanedSandboxes();
}, HOOK_TIMEOUT_MS);

describe('the built CLI bundle', () => {
  const bundleDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'apps', 'cli', 'dist', 'bundle');

  it.each(['berth-loop-attach'])('carries %s beside the bundle that holds the loop driver, so `berth attach` uses it', async (program) => {
    expect(await readFile(join(bundleDir, 'berth.cjs'), 'utf8')).toContain(`"./${program}"`);
    // The package built it (this machine has a C compiler); the bundle copied it, executable.
    expect(((await stat(join(bundleDir, program))).mode & 0o111) !== 0).toBe(true);
  });

  it("detaches with @berth/host's berth-loop-detach, which the bundle imports rather than carries (the loop driver finds it there)", async () => {
    expect(LOOP_DETACH_PROGRAM).toMatch(/packages\/host\/dist\/berth-loop-detach$/);
    expect(await readdir(bundleDir)).not.toContain('berth-loop-detach');
    expect(await readFile(join(bundleDir, 'berth.cjs'), 'utf8')).not.toContain('"./berth-loop-detach"');
  });
});

describe.skipIf(!isRoot)('berth CLI end to end (real loop devices)', { timeout: TEST_TIMEOUT_MS }, () => {
  let sandbox: BerthSandbox;
  const volumeIds = new Set<string>();

  beforeEach(async () => {
    sandbox = await makeSandbox();
  }, HOOK_TIMEOUT_MS);

  afterEach(async () => {
    // remove() stops any berth still running, detaches the sandbox's loop devices and deletes it.
    await sandbox.remove();
    await removeBerthLinks(volumeIds);
    volumeIds.clear();
  }, HOOK_TIMEOUT_MS);

  async function createVolume(name: string, size = '64MiB'): Promise<Volume> {
    const volume = await sandbox.json<Volume>(['volume', 'create', '--size', size, '--name', name]);
    volumeIds.add(volume.id);
    return volume;
  }

  it('creates, attaches, lists, detaches and deletes a volume', async () => {
    // create: a sparse file of the asked size under the data dir
    const volume = await createVolume('data1');
    expect(volume).toMatchObject({ name: 'data1', status: 'available', sizeBytes: 64 * MiB, backend: 'file', multiattach: false });
    const file = volume.providerLocation;
    expect(file).not.toBeNull();
    const volumeFile = file as string;
    expect(volumeFile.startsWith(`${sandbox.dataDir}/`)).toBe(true);
    expect((await stat(volumeFile)).size).toBe(64 * MiB);

    // attach: a real loop device over that file, and the stable link to it
    const attached = await sandbox.json<OperationOutcome>(['attach', 'data1']);
    expect(attached.operation.state).toBe('succeeded');
    expect(attached.volume.status).toBe('in-use');
    const attachment = attached.attachment as Attachment;
    expect(attachment.status).toBe('attached');
    expect(attachment.transport).toBe('loop');
    const device = attachment.device?.path ?? '';
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    expect(existsSync(device)).toBe(true);
    expect(loopDevicesBacking(volumeFile)).toEqual([device]);
    // Its own link, and the volume's (both lead to the one device of the volume on this host).
    expect(attachment.publishedPath).toBe(`/dev/berth/${attachment.id}`);
    expect(await realpath(`/dev/berth/${attachment.id}`)).toBe(device);
    expect((await lstat(`/dev/berth/${volume.id}`)).isSymbolicLink()).toBe(true);
    expect(await realpath(`/dev/berth/${volume.id}`)).toBe(device);
    expect(Object.keys(attachment.timings)).toEqual(expect.arrayContaining(['reserve', 'initialize', 'connect', 'publish']));

    // attachment list / show: the same attachment, with its journal
    const attachments = await sandbox.json<Attachment[]>(['attachment', 'list']);
    expect(attachments).toHaveLength(1);
    expect(attachments[0]).toMatchObject({ id: attachment.id, volumeId: volume.id, status: 'attached', device: { path: device } });
    const shown = await sandbox.json<Attachment & { operations: Operation[] }>(['attachment', 'show', attachment.id]);
    expect(shown.status).toBe('attached');
    const attachOperation = shown.operations.find((o) => o.kind === 'attach');
    expect(attachOperation?.state).toBe('succeeded');
    expect(attachOperation?.steps.map((s) => s.name)).toEqual(expect.arrayContaining(['reserve', 'connect', 'publish', 'complete']));
    expect((await sandbox.json<Volume[]>(['volume', 'list'])).map((v) => [v.name, v.status])).toEqual([['data1', 'in-use']]);

    // the human table says the same, in 100 columns; `-o wide` adds host, mode, transport and timings
    const table = await sandbox.run(['attachment', 'list']);
    expect(table.exitCode).toBe(0);
    expect(table.stdout).toMatch(/STATUS/);
    expect(table.stdout).toMatch(/DEVICE/);
    expect(table.stdout).not.toMatch(/TIMINGS/);
    expect(table.stdout).toContain('attached');
    expect(table.stdout).toContain(device);
    expect(Math.max(...table.stdout.split('\n').map((line) => line.length))).toBeLessThanOrEqual(100);
    const wide = await sandbox.run(['attachment', 'ls', '-o', 'wide']);
    expect(wide.exitCode).toBe(0);
    expect(wide.stdout).toMatch(/HOST/);
    expect(wide.stdout).toMatch(/TIMINGS/);
    expect(wide.stdout).toContain(`/dev/berth/${attachment.id}`);

    // detach: the loop device no longer backs the file, the link is gone
    const detached = await sandbox.json<OperationOutcome>(['detach', 'data1']);
    expect(detached.operation.state).toBe('succeeded');
    expect(detached.volume.status).toBe('available');
    expect(loopDevicesBacking(volumeFile)).toEqual([]);
    expect(existsSync(`/dev/berth/${volume.id}`)).toBe(false);
    const remaining = await sandbox.json<Attachment[]>(['attachment', 'list', '--volume', 'data1']);
    expect(remaining.filter((a) => a.status !== 'detached')).toEqual([]);

    // delete: the row and the file are gone
    const deleted = await sandbox.json<{ deleted: boolean; id: string }>(['volume', 'delete', 'data1', '--yes']);
    expect(deleted).toEqual({ deleted: true, id: volume.id, name: 'data1' });
    expect(existsSync(volumeFile)).toBe(false);
    expect(await sandbox.json<Volume[]>(['volume', 'list'])).toEqual([]);
  });

  it('prints the device, the stable link, the transport and the step timings for people', async () => {
    const volume = await createVolume('web-data', '16MiB');
    const attach = await sandbox.run(['attach', 'web-data']);
    expect(attach.exitCode).toBe(0);
    expect(attach.stdout).toMatch(/device:\s+\/dev\/loop\d+/);
    // The attachment's own link (the volume's, /dev/berth/<volume-id>, leads to the same device).
    expect(attach.stdout).toMatch(/link:\s+\/dev\/berth\/([0-9a-f-]{36})\n[\s\S]*attachment:\s+\1/);
    expect(await realpath(`/dev/berth/${volume.id}`)).toMatch(/^\/dev\/loop\d+$/);
    expect(attach.stdout).toMatch(/transport:\s+loop/);
    expect(attach.stdout).toMatch(/timings:\s+reserve \d+ms/);
    const detach = await sandbox.run(['detach', 'web-data']);
    expect(detach.exitCode).toBe(0);
    expect(detach.stdout).toContain('available');
  });
});

describe.skipIf(!isRoot)('bad input gets a clear error, its own exit code, and changes nothing', { timeout: TEST_TIMEOUT_MS }, () => {
  // One sandbox for the group: each case checks that the volume and attachment lists are unchanged.
  let sandbox: BerthSandbox;
  let volume: Volume;

  beforeAll(async () => {
    sandbox = await makeSandbox();
    volume = await sandbox.json<Volume>(['volume', 'create', '--size', '16MiB', '--name', 'data1']);
  }, HOOK_TIMEOUT_MS);

  afterAll(async () => {
    await sandbox.remove();
    await removeBerthLinks([volume.id]);
  }, HOOK_TIMEOUT_MS);

  async function expectUnchanged<T>(action: () => Promise<T>): Promise<T> {
    const [volumesBefore, attachmentsBefore] = await Promise.all([
      sandbox.json<Volume[]>(['volume', 'list']),
      sandbox.json<Attachment[]>(['attachment', 'list']),
    ]);
    const result = await action();
    const [volumesAfter, attachmentsAfter] = await Promise.all([
      sandbox.json<Volume[]>(['volume', 'list']),
      sandbox.json<Attachment[]>(['attachment', 'list']),
    ]);
    expect(volumesAfter).toEqual(volumesBefore);
    expect(attachmentsAfter).toEqual(attachmentsBefore);
    return result;
  }

  it('an unknown volume is NOT_FOUND', async () => {
    const run = await expectUnchanged(() => sandbox.run(['attach', 'no-such-volume', '--json']));
    expect(run.exitCode).toBe(EXIT_CODES.NOT_FOUND);
    const error = errorBody(run);
    expect(error.code).toBe('NOT_FOUND');
    expect(error.message).toContain('no-such-volume');

    // for people: Error and Hint lines on stderr, no stack trace, nothing on stdout
    const human = await sandbox.run(['volume', 'show', 'no-such-volume']);
    expect(human.exitCode).toBe(EXIT_CODES.NOT_FOUND);
    expect(human.stderr).toMatch(/^Error: .*no-such-volume/m);
    expect(human.stderr).toMatch(/^Hint: /m);
    expect(human.stderr).not.toMatch(/^\s+at /m);
    expect(human.stdout).toBe('');
  });

  it('negative, zero, absurd and malformed sizes are refused before anything is created', async () => {
    const cases: Array<[string, string[]]> = [
      ['negative', ['--size=-1GiB']],
      ['negative, as a separate word', ['--size', '-1GiB']],
      ['zero', ['--size', '0']],
      ['absurd', ['--size', '5000TiB']],
      ['not a size', ['--size', 'lots']],
      ['not a multiple of 512 bytes', ['--size', '1000']],
    ];
    const runs = await expectUnchanged(() =>
      Promise.all(cases.map(([, sizeArgs]) => sandbox.run(['volume', 'create', ...sizeArgs, '--name', 'sized', '--json']))),
    );
    runs.forEach((run, i) => {
      const label = cases[i]?.[0];
      expect(run.exitCode, label).toBe(EXIT_CODES.VALIDATION);
      expect(errorBody(run).code, label).toBe('VALIDATION');
      expect(errorBody(run).message, label).toMatch(/size/);
    });
  });

  it('a name with ../ is refused and no file appears outside the data dir', async () => {
    const outside = dirname(sandbox.dataDir);
    const entriesBefore = await readdir(outside);
    const run = await expectUnchanged(() => sandbox.run(['volume', 'create', '--size', '16MiB', '--name', '../evil', '--json']));
    expect(run.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(errorBody(run).code).toBe('VALIDATION');
    expect(errorBody(run).message).toContain('../evil');
    expect(await readdir(outside)).toEqual(entriesBefore);
    expect(existsSync(join(outside, 'evil'))).toBe(false);

    const human = await sandbox.run(['volume', 'create', '--size', '16MiB', '--name', '../../etc/evil']);
    expect(human.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(human.stderr).toMatch(/^Error: invalid volume name/m);
    expect(human.stderr).toMatch(/^Hint: /m);

    const show = await sandbox.run(['volume', 'show', '../data1', '--json']);
    expect(show.exitCode).toBe(EXIT_CODES.VALIDATION);
  });

  it('detaching a detached volume is refused', async () => {
    const run = await expectUnchanged(() => sandbox.run(['detach', 'data1', '--json']));
    const error = errorBody(run);
    expect(['INVALID_STATE', 'NOT_FOUND', 'CONFLICT']).toContain(error.code);
    expect(run.exitCode).toBe(EXIT_CODES[error.code as keyof typeof EXIT_CODES]);
    expect(run.exitCode).toBeGreaterThan(1);
  });

  it('an unknown flag is a VALIDATION error in the same JSON shape', async () => {
    const run = await sandbox.run(['volume', 'list', '--colour', 'blue', '--json']);
    expect(run.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(errorBody(run).code).toBe('VALIDATION');
  });

  describe('while data1 is attached', () => {
    let device: string;

    beforeAll(async () => {
      const first = await sandbox.json<OperationOutcome>(['attach', 'data1']);
      device = first.attachment?.device?.path ?? '';
    }, HOOK_TIMEOUT_MS);

    afterAll(async () => {
      await sandbox.run(['detach', 'data1', '--force', '--yes']);
    }, HOOK_TIMEOUT_MS);

    it('attaching it again is refused and leaves the first attachment alone', async () => {
      const run = await expectUnchanged(() => sandbox.run(['attach', 'data1', '--json']));
      const error = errorBody(run);
      expect(['CONFLICT', 'INVALID_STATE']).toContain(error.code);
      expect(run.exitCode).toBe(EXIT_CODES[error.code as keyof typeof EXIT_CODES]);
      expect(run.exitCode).toBeGreaterThan(1);
      expect(loopDevicesBacking(volume.providerLocation as string)).toEqual([device]);
    });

    it('deleting it is refused and it stays attached', async () => {
      const run = await expectUnchanged(() => sandbox.run(['volume', 'delete', 'data1', '--yes', '--json']));
      const error = errorBody(run);
      expect(['INVALID_STATE', 'CONFLICT']).toContain(error.code);
      expect(run.exitCode).toBe(EXIT_CODES[error.code as keyof typeof EXIT_CODES]);
      expect(existsSync(volume.providerLocation as string)).toBe(true);
    });
  });
});
