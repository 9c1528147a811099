// Issue 15 end to end: the real `berth` CLI attaches a volume into a running QEMU guest (TCG,
// booted once for the file by @berth/vmkit) through the whole pipeline — loop transport on a
// file-backend volume, then the qemu consumer's hot-plug — and detaches it again; a guest that
// does not let go; berth SIGKILLed around the guest step — under plain QEMU and under libvirt
// (each suite shares its one booted guest with its crash cases).
import { existsSync, lstatSync, renameSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { EXIT_CODES, type Attachment, type Operation, type OperationOutcome, type ReconcileReport, type Server, type Volume } from '@berth/core';
import { createHostServices } from '@berth/host';
import { bootLibvirtGuest, bootQemuGuest, guestSerial, type GuestAgent, type LibvirtGuest, type QemuGuest } from '@berth/vmkit';
import { execa } from 'execa';
import { BERTH_BIN, errorBody, inheritedEnv, makeSandbox, REPO_ROOT, type BerthSandbox } from '../support/berth-cli.js';
import { crashChild, readAt } from '../support/host-state.js';
import { loopDevicesBacking } from '../support/loop-devices.js';
import { sweepOrphanedSandboxes } from '../support/orphans.js';
import { createSimIscsiBerth } from '../support/sim-iscsi-berth.js';

const host = createHostServices();
// The guest probes a hot-plugged disk in 0.3-0.5 s on a quiet machine; a loaded one needs far more.
const SEE_MS = 60_000;
// How long a guest has to let go of a disk (the paused guest below waits it out twice).
const UNPLUG_MS = 6_000;
const MiB = 2 ** 20;

/** Whether a path exists as a link, even a dangling one (`existsSync` follows links). */
function linkExists(file: string): boolean {
  try {
    lstatSync(file);
    return true;
  } catch {
    return false;
  }
}

/** A guest the crash cases run against: berth's sandbox, the server, the guest's agent and what its hypervisor still holds of a volume. */
interface GuestUnderTest {
  sandbox: BerthSandbox;
  server: string;
  agent: GuestAgent;
  /** The names the hypervisor still holds for the volume (device ids, block nodes, disk sources); `[]` when nothing. */
  leftovers(volumeId: string): Promise<string[]>;
}

async function createVolumeIn(sandbox: BerthSandbox, name: string): Promise<Volume & { file: string }> {
  const volume = await sandbox.json<Volume>(['volume', 'create', '--size', '64MiB', '--name', name]);
  return { ...volume, file: String(volume.providerLocation) };
}

/** Nothing of the volume left: no loop device, no /dev/berth link, no disk in the guest or in its hypervisor. */
async function expectNothingLeftIn(g: GuestUnderTest, volume: Volume & { file: string }): Promise<void> {
  expect(loopDevicesBacking(volume.file)).toEqual([]);
  expect(linkExists(`/dev/berth/${volume.id}`)).toBe(false);
  // Every attachment's own link (`/dev/berth/<attachment id>`) of this volume, crashed ones too.
  const operations = await g.sandbox.json<Operation[]>(['operation', 'list', '--all']);
  const attachmentIds = operations.filter((o) => o.volumeId === volume.id && o.attachmentId !== null).map((o) => String(o.attachmentId));
  expect(attachmentIds.filter((id) => linkExists(`/dev/berth/${id}`))).toEqual([]);
  expect((await g.agent.disks()).map((d) => d.serial)).not.toContain(guestSerial(volume.id));
  expect(await g.leftovers(volume.id)).toEqual([]);
}

/**
 * SIGKILL of a real berth process at the guest step's boundaries — between the host connect and
 * the hot-plug, and between the unplug and the disconnect — then the next command recovers: the
 * volume is in a state a user can trust and no stray disk is left in the guest or its hypervisor.
 */
function itRecoversFromKillsAroundTheGuestStep(guest: () => GuestUnderTest): void {
  it.each([
    ['attach', 'attach.publish.before', 'available'],
    ['attach', 'attach.publish.after', 'available'],
    ['attach', 'attach.complete.before', 'available'],
    ['detach', 'detach.unpublish.after', 'in-use'],
    ['detach', 'detach.disconnect.before', 'available'],
  ] as const)('%s killed at %s: the next berth leaves no stray disk in the guest and the volume %s', async (command, point, expected) => {
    const g = guest();
    const name = `crash-${point.replace(/\W/g, '-')}`;
    const volume = await createVolumeIn(g.sandbox, name);
    if (command === 'detach') {
      await g.sandbox.json(['attach', name, '--server', g.server]);
      await g.agent.waitForDisk(volume.id, SEE_MS);
    }
    const outcome = crashChild(g.sandbox.dataDir, command, point, { volume: name, args: command === 'attach' ? [g.server] : [], timeoutMs: 120_000 });
    expect(outcome).toBe('killed');

    // Any command recovers first; then the state must be one a user can trust.
    const after = await g.sandbox.json<Volume>(['volume', 'show', name]);
    expect(after.status).toBe(expected);
    const attachments = await g.sandbox.json<Attachment[]>(['attachment', 'list', '--volume', name]);
    if (expected === 'available') {
      expect(attachments).toEqual([]);
      await g.agent.waitForDiskGone(volume.id, SEE_MS);
      await expectNothingLeftIn(g, volume);
    } else {
      // Rolled back: attached again, the guest has exactly this disk, one loop device.
      expect(attachments.map((a) => a.status)).toEqual(['attached']);
      await g.agent.waitForDisk(volume.id, SEE_MS);
      expect(loopDevicesBacking(volume.file)).toHaveLength(1);
      expect(await g.leftovers(volume.id)).not.toEqual([]);
      await g.sandbox.json(['detach', name]);
      await expectNothingLeftIn(g, volume);
    }
    expect((await g.sandbox.json<{ differences: unknown[] }>(['reconcile', '--dry-run'])).differences).toEqual([]);
    await g.sandbox.json(['volume', 'delete', name, '--yes']);
  }, 240_000);
}

/**
 * berth SIGKILLed while a paused guest has its unplug request: the journal cannot say whether the
 * request went out, the guest still has the disk, and it drops it at its resume if it did — so the
 * recovery leaves the attachment `error_detaching`, never `attached` (before: rolled back to
 * attached, and the resumed guest dropped the disk under it). A plain detach finishes afterwards.
 */
function itRecoversAKillDuringAPausedUnplug(guest: () => GuestUnderTest & { pause(): Promise<void>; resume(): Promise<void> }): void {
  it('berth SIGKILLed while a paused guest has the unplug request: the next berth leaves it error_detaching, not attached; resumed, a plain detach finishes', async () => {
    const g = guest();
    const volume = await createVolumeIn(g.sandbox, 'killed-unplug');
    await g.sandbox.json(['attach', 'killed-unplug', '--server', g.server]);
    await g.agent.waitForDisk(volume.id, SEE_MS);
    await g.pause();
    let resumed = false;
    try {
      // A real berth process, killed while it waits for the paused guest to let go.
      const child = execa(process.execPath, [BERTH_BIN, 'detach', 'killed-unplug', '--json'], { env: { ...inheritedEnv(), ...g.sandbox.env }, cwd: REPO_ROOT, reject: false, stdin: 'ignore' });
      try {
        await host.waiter.waitUntil(
          g.sandbox.dataDir,
          async () => {
            const operations = await g.sandbox.json<Operation[]>(['operation', 'list', '--all']);
            const detach = operations.find((o) => o.kind === 'detach' && o.volumeId === volume.id);
            return detach?.steps.some((step) => step.name === 'unpublish' && step.state === 'running') === true ? true : undefined;
          },
          { timeoutMs: 60_000, what: 'the detach waiting for the guest' },
        );
      } finally {
        child.kill('SIGKILL');
        await child;
      }
      // The next command recovers it: the guest still has the disk, so a request may be pending.
      const [attachment] = await g.sandbox.json<Attachment[]>(['attachment', 'list', '--volume', 'killed-unplug']);
      expect(attachment?.status).toBe('error_detaching');
      expect(attachment?.error).toContain('the guest still has it');
      expect(loopDevicesBacking(volume.file)).toHaveLength(1);
      expect(await g.leftovers(volume.id)).not.toEqual([]);
      await g.resume();
      resumed = true;
    } finally {
      if (!resumed) await g.resume();
    }
    // Whether or not the request had gone out before the kill, a plain detach finishes now.
    await g.sandbox.json(['detach', 'killed-unplug']);
    await expectNothingLeftIn(g, volume);
    await g.sandbox.json(['volume', 'delete', 'killed-unplug', '--yes']);
  }, 240_000);
}

describe('berth attach into a real QEMU guest (CLI, loop transport, file backend, qemu consumer)', () => {
  let guest: QemuGuest;
  let sandbox: BerthSandbox;

  beforeAll(async () => {
    await sweepOrphanedSandboxes();
    // berth runs in the checkout, so the config's plugin is found by name (as a user's would be
    // from where it is installed).
    sandbox = await makeSandbox({ cwd: REPO_ROOT });
    await mkdir(sandbox.dataDir, { recursive: true });
    await writeFile(
      join(sandbox.dataDir, 'config.json'),
      JSON.stringify({ plugins: [{ package: '@berth/consumer-qemu', options: { unplugTimeoutMs: UNPLUG_MS, qmpTimeoutMs: 30_000 } }] }),
    );
    guest = await bootQemuGuest({ runner: host.runner });
    await sandbox.json(['server', 'create', 'vm-1', '--hypervisor', 'qemu', '--qmp', guest.qmpSocket]);
  }, 300_000);

  afterAll(async () => {
    try {
      await guest?.stop();
    } finally {
      // Detaches the sandbox's loop devices and removes its /dev/berth links, whatever the tests left.
      await sandbox?.remove();
    }
  }, 120_000);

  /** A volume's disk in QEMU: its qdev id (`berth-<volume id>`) and block node (`berth-<24 hex>`), where present. */
  async function qemuLeftovers(volumeId: string): Promise<string[]> {
    const devices = (await guest.control('qom-list', { path: '/machine/peripheral' })) as Array<{ name: string }>;
    const nodes = (await guest.control('query-named-block-nodes', { flat: true })) as Array<{ 'node-name': string }>;
    const ours = new Set([`berth-${volumeId}`, `berth-${volumeId.replace(/-/g, '').slice(0, 24)}`]);
    return [...devices.map((d) => d.name), ...nodes.map((n) => n['node-name'])].filter((name) => ours.has(name));
  }

  const underTest = (): GuestUnderTest => ({ sandbox, server: 'vm-1', agent: guest.agent, leftovers: qemuLeftovers });
  const createVolume = (name: string) => createVolumeIn(sandbox, name);
  const expectNothingLeft = (volume: Volume & { file: string }) => expectNothingLeftIn(underTest(), volume);

  it('server create/show carry the hypervisor; bad flags are refused clearly', async () => {
    const server = await sandbox.json<Server>(['server', 'show', 'vm-1']);
    expect(server.hypervisor).toEqual({ type: 'qemu', qmp: guest.qmpSocket, bus: 'pci.0' });
    const human = await sandbox.run(['server', 'show', 'vm-1']);
    expect(human.stdout).toContain(`qemu (qmp ${guest.qmpSocket}, bus pci.0)`);
    const stray = await sandbox.run(['server', 'create', 'vm-x', '--qmp', '/run/x.sock']);
    expect(stray.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(stray.stderr).toContain('--qmp belongs to --hypervisor qemu, not host');
    const missing = await sandbox.run(['server', 'create', 'vm-x', '--hypervisor', 'qemu', '--json']);
    expect(errorBody(missing)).toMatchObject({ code: 'VALIDATION', message: '--hypervisor qemu needs --qmp' });
    expect((await sandbox.json<Server[]>(['server', 'list'])).map((s) => s.name)).not.toContain('vm-x');
  });

  it('attach: the guest sees a virtio disk whose serial is the volume id; its writes are in the volume file after detach; nothing left', async () => {
    const volume = await createVolume('data1');
    const attached = await sandbox.json<OperationOutcome>(['attach', 'data1', '--server', 'vm-1']);
    expect(attached.attachment).toMatchObject({ status: 'attached', transport: 'loop', publishedPath: expect.stringMatching(/^\/dev\/berth\//), serial: volume.id });
    expect(attached.attachment?.guestDevice).toMatch(/^\/dev\/vd[a-z]+$/);
    const shown = await sandbox.run(['attachment', 'show', String(attached.attachment?.id)]);
    expect(shown.stdout).toMatch(/guest device:\s+\/dev\/vd[a-z]+/);
    expect(shown.stdout).toContain(volume.id);
    const [device] = loopDevicesBacking(volume.file);
    expect(device).toBeDefined();

    const name = await guest.agent.waitForDisk(volume.id, SEE_MS);
    expect((await guest.agent.disks()).find((d) => d.name === name)).toEqual({ name, serial: guestSerial(volume.id), sizeBytes: 64 * MiB, readOnly: false });
    const pattern = `berth-e2e-${volume.id.slice(0, 8)}`;
    await guest.agent.writePattern(volume.id, MiB + 77, pattern);

    const detached = await sandbox.json<OperationOutcome>(['detach', 'data1']);
    expect(detached.volume.status).toBe('available');
    expect(readAt(volume.file, pattern.length, MiB + 77).toString()).toBe(pattern);
    await expectNothingLeft(volume);
    await sandbox.json(['volume', 'delete', 'data1', '--yes']);
  });

  it('a guest that does not let go (paused): detach fails with TIMEOUT naming it, host side intact, the attachment error_detaching (the unplug stays pending); --force refuses too; after resume the guest drops the disk and the detach finishes', async () => {
    const volume = await createVolume('held');
    await sandbox.json(['attach', 'held', '--server', 'vm-1']);
    await guest.agent.waitForDisk(volume.id, SEE_MS);
    const [device] = loopDevicesBacking(volume.file);
    await guest.pause();
    try {
      for (const args of [['detach', 'held'], ['detach', 'held', '--force', '--yes']]) {
        const run = await sandbox.run([...args, '--json']);
        const error = errorBody(run);
        expect(run.exitCode, args.join(' ')).toBe(EXIT_CODES.TIMEOUT);
        expect(error.message).toContain('vm-1');
        expect(error.message).toContain('paused');
        const [attachment] = await sandbox.json<Attachment[]>(['attachment', 'list', '--volume', 'held']);
        // Not `attached`: the guest has the unplug request and acts on it when it resumes.
        expect(attachment?.status).toBe('error_detaching');
        expect(loopDevicesBacking(volume.file)).toEqual([device]);
        expect(existsSync(`/dev/berth/${volume.id}`)).toBe(true);
        expect(await qemuLeftovers(volume.id)).toContain(`berth-${volume.id}`);
      }
    } finally {
      await guest.resume();
    }
    // Resumed, the guest acts on the pending request: the disk goes without another detach.
    await guest.agent.waitForDiskGone(volume.id, SEE_MS);
    await sandbox.json(['detach', 'held']);
    await expectNothingLeft(volume);
    await sandbox.json(['volume', 'delete', 'held', '--yes']);
  });

  it('a QMP socket moved under a running guest: detach and --force refuse with CONFLICT and roll back cleanly (attached, in-use: nothing was asked of the guest); with the socket back the detach finishes', async () => {
    const volume = await createVolume('moved');
    await sandbox.json(['attach', 'moved', '--server', 'vm-1']);
    await guest.agent.waitForDisk(volume.id, SEE_MS);
    const aside = `${guest.qmpSocket}.aside`;
    renameSync(guest.qmpSocket, aside);
    try {
      for (const args of [['detach', 'moved'], ['detach', 'moved', '--force', '--yes']]) {
        const run = await sandbox.run([...args, '--json']);
        expect(run.exitCode, args.join(' ')).toBe(EXIT_CODES.CONFLICT);
        expect(errorBody(run).message).toContain('still in use');
        expect(errorBody(run).message).not.toContain('rollback failed');
        const [attachment] = await sandbox.json<Attachment[]>(['attachment', 'list', '--volume', 'moved']);
        expect(attachment?.status, args.join(' ')).toBe('attached');
        expect((await sandbox.json<Volume>(['volume', 'show', 'moved'])).status).toBe('in-use');
        expect(existsSync(`/dev/berth/${volume.id}`)).toBe(true);
      }
      expect((await guest.agent.disks()).some((d) => d.serial === guestSerial(volume.id))).toBe(true);
    } finally {
      renameSync(aside, guest.qmpSocket);
    }
    await sandbox.json(['detach', 'moved']);
    await expectNothingLeft(volume);
    await sandbox.json(['volume', 'delete', 'moved', '--yes']);
  });

  it('over iSCSI (tgt volume, the simulated host real-backed): the guest sees serial = volume id, its writes are in the LUN file after detach, nothing left', async () => {
    // A second berth world on the same guest: its own data dir, tgtd and simulated host.
    const sim = await createSimIscsiBerth({ plugins: [{ package: '@berth/consumer-qemu', options: { unplugTimeoutMs: UNPLUG_MS, qmpTimeoutMs: 30_000 } }] });
    const env = { BERTH_DATA_DIR: sim.dataDir, ...sim.childEnv };
    const berth = async <T>(args: string[]): Promise<T> => {
      const run = await sandbox.run([...args, '--json'], env);
      if (run.exitCode !== 0) throw new Error(`berth ${args.join(' ')} exited ${run.exitCode}: ${run.stderr}`);
      return JSON.parse(run.stdout) as T;
    };
    try {
      await berth(['server', 'create', 'vm-iscsi', '--hypervisor', 'qemu', '--qmp', guest.qmpSocket]);
      const volume = await berth<Volume>(['volume', 'create', '--size', '32MiB', '--name', 'iv1']);
      const attached = await berth<OperationOutcome>(['attach', 'iv1', '--server', 'vm-iscsi']);
      expect(attached.attachment).toMatchObject({ status: 'attached', transport: 'iscsi', serial: volume.id, guestDevice: expect.stringMatching(/^\/dev\/vd[a-z]+$/) });
      const name = await guest.agent.waitForDisk(volume.id, SEE_MS);
      expect((await guest.agent.disks()).find((d) => d.name === name)).toMatchObject({ serial: guestSerial(volume.id), sizeBytes: 32 * MiB, readOnly: false });
      const pattern = `berth-iscsi-${volume.id.slice(0, 8)}`;
      await guest.agent.writePattern(volume.id, 5 * MiB + 3, pattern);

      await berth(['detach', 'iv1']);
      // The tgt backend keeps each LUN as `<dataDir>/backend-tgt/luns/<volume id>.img`.
      expect(readAt(join(sim.dataDir, 'backend-tgt', 'luns', `${volume.id}.img`), pattern.length, 5 * MiB + 3).toString()).toBe(pattern);
      expect((await guest.agent.disks()).map((d) => d.serial)).not.toContain(guestSerial(volume.id));
      expect(await qemuLeftovers(volume.id)).toEqual([]);
      expect(linkExists(`/dev/berth/${volume.id}`)).toBe(false);
      expect(linkExists(`/dev/berth/${attached.attachment?.id}`)).toBe(false);
      expect(sim.leftovers()).toEqual({ loops: [], mounts: [], qsd: [] });
      expect(sim.targets().flatMap((t) => t.nexuses)).toEqual([]);
      await berth(['volume', 'delete', 'iv1', '--yes']);
    } finally {
      await sim.cleanup();
    }
  }, 120_000);

  it('reconcile: a disk plugged by hand with a berth volume\'s serial is unplugged (a dry run changes nothing), a foreign disk is left; a disk unplugged behind berth\'s back is plugged again', async () => {
    const volume = await createVolume('guestrec');
    const files = { berth: join(sandbox.root, 'by-hand-berth.img'), foreign: join(sandbox.root, 'by-hand-foreign.img') };
    const plugByHand = async (id: string, file: string, serial: string): Promise<void> => {
      await writeFile(file, '');
      await truncate(file, 8 * MiB);
      await guest.control('blockdev-add', { driver: 'file', 'node-name': id, filename: file });
      await guest.control('device_add', { driver: 'virtio-blk-pci', id, drive: id, bus: 'pci.0', serial });
      await guest.agent.waitForDisk(serial, SEE_MS);
    };
    const FOREIGN = 'not-berth-disk-1';
    try {
      await plugByHand('by-hand-berth', files.berth, volume.id);
      await plugByHand('by-hand-foreign', files.foreign, FOREIGN);
      const dry = await sandbox.json<ReconcileReport>(['reconcile', '--dry-run']);
      expect(dry.differences).toEqual([
        expect.objectContaining({ kind: 'guest_disk_without_attachment', fix: 'unplug', state: 'planned', volumeId: volume.id, resource: 'disk /machine/peripheral/by-hand-berth of server vm-1' }),
      ]);
      expect((await guest.agent.disks()).map((d) => d.serial)).toContain(guestSerial(volume.id));
      const applied = await sandbox.json<ReconcileReport>(['reconcile', '--yes']);
      expect(applied.differences).toEqual([expect.objectContaining({ kind: 'guest_disk_without_attachment', state: 'applied' })]);
      await guest.agent.waitForDiskGone(volume.id, SEE_MS);
      expect((await guest.agent.disks()).map((d) => d.serial)).toEqual([FOREIGN]);
    } finally {
      await guest.control('device_del', { id: 'by-hand-foreign' }).catch(() => undefined);
      await guest.agent.waitForDiskGone(FOREIGN, SEE_MS).catch(() => undefined);
      for (const node of ['by-hand-berth', 'by-hand-foreign']) await guest.control('blockdev-del', { 'node-name': node }).catch(() => undefined);
    }

    const attached = await sandbox.json<OperationOutcome>(['attach', 'guestrec', '--server', 'vm-1']);
    await guest.agent.waitForDisk(volume.id, SEE_MS);
    await guest.control('device_del', { id: `berth-${volume.id}` });
    await guest.agent.waitForDiskGone(volume.id, SEE_MS);
    const dry = await sandbox.json<ReconcileReport>(['reconcile', '--dry-run']);
    expect(dry.differences).toEqual([
      expect.objectContaining({ kind: 'attachment_missing_from_guest', fix: 'replug', state: 'planned', attachmentId: attached.attachment?.id }),
    ]);
    expect((await guest.agent.disks()).map((d) => d.serial)).not.toContain(guestSerial(volume.id));
    const applied = await sandbox.json<ReconcileReport>(['reconcile', '--yes']);
    expect(applied.differences).toEqual([expect.objectContaining({ kind: 'attachment_missing_from_guest', state: 'applied' })]);
    await guest.agent.waitForDisk(volume.id, SEE_MS);
    expect((await sandbox.json<ReconcileReport>(['reconcile', '--dry-run'])).differences).toEqual([]);

    // A disk someone plugs with the attached volume's serial does not stand for the attachment:
    // berth's own disk gone, reconcile plugs it back and takes the impostor (another file) out.
    const impostor = join(sandbox.root, 'impostor.img');
    const serialCount = async (): Promise<number> => (await guest.agent.disks()).filter((d) => d.serial === guestSerial(volume.id)).length;
    try {
      await writeFile(impostor, '');
      await truncate(impostor, 8 * MiB);
      await guest.control('blockdev-add', { driver: 'file', 'node-name': 'impostor', filename: impostor });
      await guest.control('device_add', { driver: 'virtio-blk-pci', id: 'impostor', drive: 'impostor', bus: 'pci.0', serial: volume.id });
      await vi.waitFor(async () => expect(await serialCount()).toBe(2), { timeout: SEE_MS, interval: 200 });
      await guest.control('device_del', { id: `berth-${volume.id}` });
      await vi.waitFor(async () => expect(await serialCount()).toBe(1), { timeout: SEE_MS, interval: 200 });
      const both = await sandbox.json<ReconcileReport>(['reconcile', '--dry-run']);
      expect(both.differences.map((d) => `${d.kind}:${d.fix}:${d.state}`).sort()).toEqual(['attachment_missing_from_guest:replug:planned', 'guest_disk_without_attachment:unplug:planned']);
      expect(both.differences.find((d) => d.kind === 'guest_disk_without_attachment')?.resource).toBe('disk /machine/peripheral/impostor of server vm-1');
      await sandbox.json<ReconcileReport>(['reconcile', '--yes']);
      const disks = await sandbox.json<ReconcileReport>(['reconcile', '--dry-run']);
      expect(disks.differences).toEqual([]);
      await vi.waitFor(async () => expect(await serialCount()).toBe(1), { timeout: SEE_MS, interval: 200 });
    } finally {
      await guest.control('device_del', { id: 'impostor' }).catch(() => undefined);
      await guest.control('blockdev-del', { 'node-name': 'impostor' }).catch(() => undefined);
    }
    await sandbox.json(['detach', 'guestrec']);
    await expectNothingLeft(volume);
    await sandbox.json(['volume', 'delete', 'guestrec', '--yes']);
  }, 240_000);

  it('a server whose consumer is not installed is refused with CONFIG before anything is touched', async () => {
    const volume = await createVolume('nocons');
    await sandbox.json(['server', 'create', 'web-1', '--hypervisor', 'libvirt', '--domain', 'web-1']);
    const run = await sandbox.run(['attach', 'nocons', '--server', 'web-1', '--json']);
    expect(run.exitCode).toBe(EXIT_CODES.CONFIG);
    expect(errorBody(run)).toMatchObject({ code: 'CONFIG', hint: expect.stringContaining('@berth/consumer-libvirt') });
    expect((await sandbox.json<Volume>(['volume', 'show', 'nocons'])).status).toBe('available');
    expect(loopDevicesBacking(volume.file)).toEqual([]);
    await sandbox.json(['volume', 'delete', 'nocons', '--yes']);
    await sandbox.json(['server', 'delete', 'web-1', '--yes']);
  });

  itRecoversFromKillsAroundTheGuestStep(underTest);
  itRecoversAKillDuringAPausedUnplug(() => ({ ...underTest(), pause: () => guest.pause(), resume: () => guest.resume() }));

  // Last: it stops the file's guest.
  it('a guest whose QEMU is gone holds nothing: detach --force tears the host side down', async () => {
    const volume = await createVolume('orphaned');
    const attached = await sandbox.json<OperationOutcome>(['attach', 'orphaned', '--server', 'vm-1']);
    await guest.agent.waitForDisk(volume.id, SEE_MS);
    expect(loopDevicesBacking(volume.file)).toHaveLength(1);
    await guest.stop();
    const detached = await sandbox.json<OperationOutcome>(['detach', 'orphaned', '--force', '--yes']);
    expect(detached.volume.status).toBe('available');
    expect(loopDevicesBacking(volume.file)).toEqual([]);
    expect(linkExists(`/dev/berth/${volume.id}`)).toBe(false);
    expect(linkExists(`/dev/berth/${attached.attachment?.id}`)).toBe(false);
  });
});

describe('berth attach into a real libvirt domain (CLI, loop transport, file backend, libvirt consumer)', () => {
  let guest: LibvirtGuest;
  let sandbox: BerthSandbox;

  beforeAll(async () => {
    sandbox = await makeSandbox({ cwd: REPO_ROOT });
    await mkdir(sandbox.dataDir, { recursive: true });
    await writeFile(join(sandbox.dataDir, 'config.json'), JSON.stringify({ plugins: ['@berth/consumer-libvirt'] }));
    guest = await bootLibvirtGuest({ runner: host.runner });
    await sandbox.json(['server', 'create', 'web-1', '--hypervisor', 'libvirt', '--domain', guest.domain, '--uri', guest.uri]);
  }, 300_000);

  afterAll(async () => {
    try {
      await guest?.stop();
    } finally {
      await sandbox?.remove();
    }
  }, 120_000);

  /** The lines of the live domain XML that name the volume (its disk's source, serial, alias). */
  async function domainLeftovers(volumeId: string): Promise<string[]> {
    const xml = await host.runner.run('virsh', ['-c', guest.uri, 'dumpxml', guest.domain], { timeoutMs: 30_000 });
    return xml.stdout.split('\n').filter((line) => line.includes(volumeId)).map((line) => line.trim());
  }

  // The suite's booted domain, shared: booting another costs ~30 s of the test budget.
  itRecoversFromKillsAroundTheGuestStep(() => ({ sandbox, server: 'web-1', agent: guest.agent, leftovers: domainLeftovers }));
  itRecoversAKillDuringAPausedUnplug(() => ({ sandbox, server: 'web-1', agent: guest.agent, leftovers: domainLeftovers, pause: () => guest.suspend(), resume: () => guest.resume() }));

  it('attach: the domain\'s guest sees serial = volume id, its writes are in the file after detach, nothing left in the domain', async () => {
    const created = await sandbox.json<Volume>(['volume', 'create', '--size', '64MiB', '--name', 'lv1']);
    const file = String(created.providerLocation);
    const attached = await sandbox.json<OperationOutcome>(['attach', 'lv1', '--server', 'web-1']);
    expect(attached.attachment).toMatchObject({ status: 'attached', transport: 'loop', guestDevice: expect.stringMatching(/^\/dev\/vd[a-z]+$/), serial: created.id });
    await guest.agent.waitForDisk(created.id, SEE_MS);
    const pattern = `berth-libvirt-${created.id.slice(0, 8)}`;
    await guest.agent.writePattern(created.id, 2 * MiB + 5, pattern);
    const domblk = async (): Promise<string> => (await host.runner.run('virsh', ['-c', guest.uri, 'domblklist', guest.domain, '--details'], { timeoutMs: 30_000 })).stdout;
    expect(await domblk()).toContain('/dev/berth/');

    await sandbox.json(['detach', 'lv1']);
    expect(readAt(file, pattern.length, 2 * MiB + 5).toString()).toBe(pattern);
    expect(loopDevicesBacking(file)).toEqual([]);
    expect(linkExists(`/dev/berth/${created.id}`)).toBe(false);
    expect(linkExists(`/dev/berth/${attached.attachment?.id}`)).toBe(false);
    expect((await guest.agent.disks()).map((d) => d.serial)).not.toContain(guestSerial(created.id));
    expect(await domblk()).not.toContain('/dev/berth/');
    await sandbox.json(['volume', 'delete', 'lv1', '--yes']);
  });

  it('reconcile: a disk attached by hand (virsh attach-device) with a berth volume\'s serial is unplugged from the domain; a dry run changes nothing', async () => {
    const created = await sandbox.json<Volume>(['volume', 'create', '--size', '16MiB', '--name', 'lvrec']);
    // Where QEMU (user libvirt-qemu) can reach it: libvirt relabels the file, not its directories.
    const dir = await mkdtemp(join('/dev/shm', 'berth-e2e-guest-'));
    await chmod(dir, 0o755);
    const file = join(dir, 'by-hand.img');
    await writeFile(file, '');
    await truncate(file, 8 * MiB);
    const xml = join(dir, 'disk.xml');
    await writeFile(xml, `<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${file}'/><target dev='vdt' bus='virtio'/><serial>${created.id}</serial></disk>\n`);
    const virsh = (args: string[]) => host.runner.run('virsh', ['-c', guest.uri, ...args], { timeoutMs: 30_000, reject: false });
    try {
      expect((await virsh(['attach-device', guest.domain, xml, '--live'])).exitCode).toBe(0);
      await guest.agent.waitForDisk(created.id, SEE_MS);
      const dry = await sandbox.json<ReconcileReport>(['reconcile', '--dry-run']);
      expect(dry.differences).toEqual([expect.objectContaining({ kind: 'guest_disk_without_attachment', fix: 'unplug', state: 'planned', volumeId: created.id })]);
      expect((await guest.agent.disks()).map((d) => d.serial)).toContain(guestSerial(created.id));
      const applied = await sandbox.json<ReconcileReport>(['reconcile', '--yes']);
      expect(applied.differences).toEqual([expect.objectContaining({ kind: 'guest_disk_without_attachment', state: 'applied' })]);
      await guest.agent.waitForDiskGone(created.id, SEE_MS);
      expect((await virsh(['domblklist', guest.domain])).stdout).not.toContain(file);
    } finally {
      await virsh(['detach-disk', guest.domain, 'vdt', '--live']);
      await rm(dir, { recursive: true, force: true });
    }
    await sandbox.json(['volume', 'delete', 'lvrec', '--yes']);
  }, 120_000);
});
