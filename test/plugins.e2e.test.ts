// Plugins for real: the fixture packages in test/fixtures are found by the runtime's loader (through
// BERTH_PLUGIN_DIRS = this workspace, whose package.json lists them with `file:`), and
// `berth plugins install <tarball>` makes a packed plugin usable by the pipeline.
import { existsSync } from 'node:fs';
import { mkdir, readFile, realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Attachment, DoctorEntry, OperationOutcome, PluginReport, Volume } from '@berth/core';
import { EXIT_CODES } from '@berth/core';
import { makeSandbox, TEST_WORKSPACE, type BerthSandbox } from './support/berth-cli.js';
import { sweepOrphanedSandboxes } from './support/orphans.js';
import { loopDevicesBacking, removeBerthLinks } from './support/loop-devices.js';

const FIXTURE_DIR = join(TEST_WORKSPACE, 'fixtures', 'plugin-fixture');
const isRoot = process.getuid?.() === 0;
// Set here, not only in vitest.config.ts, so the suite holds when run from another directory.
const TEST_TIMEOUT_MS = 120_000;
const HOOK_TIMEOUT_MS = 60_000;

// Runs killed before their afterEach (a CI timeout) leave sandboxes behind: clean them first.
beforeAll(async () => {
  if (isRoot) await sweepOrphanedSandboxes();
}, HOOK_TIMEOUT_MS);

interface TransportLogEntry {
  event: 'connect' | 'disconnect';
  path: string | null;
}

interface DoctorReport {
  entries: DoctorEntry[];
  plugins: PluginReport;
}

async function transportLog(sandbox: BerthSandbox): Promise<TransportLogEntry[]> {
  const file = join(sandbox.dataDir, 'berth-plugin-fixture', 'transport-log.json');
  if (!existsSync(file)) return [];
  return JSON.parse(await readFile(file, 'utf8')) as TransportLogEntry[];
}

describe.skipIf(!isRoot)('berth plugins end to end', { timeout: TEST_TIMEOUT_MS }, () => {
  let sandbox: BerthSandbox | undefined;
  const volumeIds = new Set<string>();

  afterEach(async () => {
    if (sandbox !== undefined) {
      // remove() stops any berth still running, detaches the sandbox's loop devices and deletes it.
      await sandbox.remove();
      sandbox = undefined;
    }
    await removeBerthLinks(volumeIds);
    volumeIds.clear();
  }, HOOK_TIMEOUT_MS);

  /** Create, attach, detach and delete a `fixture` volume; check the fixture transport did the work. */
  async function journeyThroughFixture(s: BerthSandbox): Promise<void> {
    const volume = await s.json<Volume>(['volume', 'create', '--size', '16MiB', '--name', 'fx1', '--backend', 'fixture']);
    volumeIds.add(volume.id);
    expect(volume.backend).toBe('fixture');
    const file = volume.providerLocation as string;
    expect(file.startsWith(join(s.dataDir, 'berth-plugin-fixture'))).toBe(true);

    const attached = await s.json<OperationOutcome>(['attach', 'fx1']);
    const attachment = attached.attachment as Attachment;
    expect(attachment.status).toBe('attached');
    expect(attachment.transport).toBe('fixture');
    expect(attachment.connectionInfo?.driver_volume_type).toBe('fixture');
    expect(attachment.device?.path).toBe(file);
    expect(await realpath(`/dev/berth/${volume.id}`)).toBe(file);
    expect(await transportLog(s)).toEqual([expect.objectContaining({ event: 'connect', path: file })]);
    // the fixture transport, not the loop driver, connected it
    expect(loopDevicesBacking(file)).toEqual([]);

    const detached = await s.json<OperationOutcome>(['detach', 'fx1']);
    expect(detached.volume.status).toBe('available');
    expect((await transportLog(s)).map((e) => e.event)).toEqual(['connect', 'disconnect']);
    expect(existsSync(`/dev/berth/${volume.id}`)).toBe(false);

    await s.json(['volume', 'delete', 'fx1', '--yes']);
    expect(existsSync(file)).toBe(false);
  }

  it('finds the fixture plugin installed with file: and uses its backend and transport', async () => {
    sandbox = await makeSandbox({ pluginDirs: [TEST_WORKSPACE] });
    await journeyThroughFixture(sandbox);
  });

  it('reports the broken plugin and keeps working', async () => {
    sandbox = await makeSandbox({ pluginDirs: [TEST_WORKSPACE] });
    const report = await sandbox.json<DoctorReport>(['doctor']);
    const broken = report.plugins.failed.find((f) => f.packageName === 'berth-plugin-broken');
    expect(broken?.error).toContain('on purpose');
    expect(report.plugins.loaded.map((p) => p.packageName)).toContain('berth-plugin-fixture');
    expect(report.entries.some((e) => e.kind === 'transport' && e.name === 'fixture' && e.result.ok)).toBe(true);

    const human = await sandbox.run(['doctor']);
    expect(human.exitCode).toBe(0);
    expect(human.stdout).toMatch(/FAILED\s+berth-plugin-broken/);

    // every other command still works, and says once that a plugin is broken
    const list = await sandbox.run(['volume', 'list']);
    expect(list.exitCode).toBe(0);
    expect(list.stderr).toContain('berth-plugin-broken');
    expect(await sandbox.json<Volume[]>(['volume', 'list'])).toEqual([]);
  });

  it('`berth plugins install <tarball>` makes a packed plugin usable, and uninstall removes it', async () => {
    sandbox = await makeSandbox();
    // Before: nothing provides the `fixture` backend.
    const before = await sandbox.run(['volume', 'create', '--size', '16MiB', '--name', 'fx1', '--backend', 'fixture', '--json']);
    expect(before.exitCode).toBeGreaterThan(1);
    expect(await sandbox.json<Volume[]>(['volume', 'list'])).toEqual([]);

    const packDir = join(sandbox.root, 'pack');
    await mkdir(packDir, { recursive: true });
    const packed = await execa('npm', ['pack', FIXTURE_DIR, '--pack-destination', packDir, '--json'], {
      timeout: 60_000,
      env: { npm_config_cache: join(sandbox.home, '.npm') },
    });
    const [pack] = JSON.parse(packed.stdout) as Array<{ filename: string }>;
    const tarball = join(packDir, pack?.filename ?? 'missing.tgz');
    expect(existsSync(tarball)).toBe(true);

    const install = await sandbox.run(['plugins', 'install', tarball]);
    expect(install.exitCode, `${install.stdout}\n${install.stderr}`).toBe(0);
    const listed = await sandbox.run(['plugins', '--json']);
    expect(listed.exitCode).toBe(0);
    expect(JSON.parse(listed.stdout)).toEqual([{ name: 'berth-plugin-fixture', version: expect.any(String), type: 'user', root: expect.stringContaining(sandbox.dataDir) }]);

    const report = await sandbox.json<DoctorReport>(['doctor']);
    expect(report.plugins.loaded.map((p) => p.packageName)).toContain('berth-plugin-fixture');
    await journeyThroughFixture(sandbox);

    // While an attachment goes through its transport (and a volume lives on its backend) the
    // uninstall is refused: without the plugin neither could be detached or deleted.
    await sandbox.json(['volume', 'create', '--size', '16MiB', '--name', 'fx2', '--backend', 'fixture']);
    await sandbox.json(['attach', 'fx2']);
    const refused = await sandbox.run(['plugins', 'uninstall', 'berth-plugin-fixture']);
    expect(refused.exitCode, `${refused.stdout}\n${refused.stderr}`).toBe(EXIT_CODES.CONFLICT);
    expect(refused.stderr).toContain('attachment');
    expect(refused.stderr).toContain('transport fixture');
    expect(refused.stderr).toContain('--force');
    expect((await sandbox.json<DoctorReport>(['doctor'])).plugins.loaded.map((p) => p.packageName)).toContain('berth-plugin-fixture');
    await sandbox.json(['detach', 'fx2']);
    const volumeLeft = await sandbox.run(['plugins', 'uninstall', 'berth-plugin-fixture']);
    expect(volumeLeft.exitCode).toBe(EXIT_CODES.CONFLICT);
    expect(volumeLeft.stderr).toContain('volume fx2 (on its backend fixture)');
    await sandbox.json(['volume', 'delete', 'fx2', '--yes']);

    const uninstall = await sandbox.run(['plugins', 'uninstall', 'berth-plugin-fixture']);
    expect(uninstall.exitCode, `${uninstall.stdout}\n${uninstall.stderr}`).toBe(0);
    const after = await sandbox.json<DoctorReport>(['doctor']);
    expect(after.plugins.loaded.map((p) => p.packageName)).not.toContain('berth-plugin-fixture');
  });
});
