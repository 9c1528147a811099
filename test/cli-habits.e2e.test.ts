// The CLI's habits, held against oclif/gh/kubectl (issue 13 §2), on the built binary as a user runs
// it: confirmation and --yes, aliases, global flags before the command, unknown commands and
// oclif's usage errors in berth's Error/Hint shape, the log file, the multiattach detach hint,
// extend's sizes, and stopping berth's own tgtd.
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { managedTgtdPaths } from '@berth/backend-tgt';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { EXIT_CODES } from '@berth/core';
import type { Volume } from '@berth/core';
import { BERTH_BIN, errorBody, inheritedEnv, makeSandbox, type BerthSandbox } from './support/berth-cli.js';
import { removeBerthLinks } from './support/loop-devices.js';
import { sweepOrphanedSandboxes } from './support/orphans.js';
import { freeControlPort, freePort } from './support/ports.js';

const isRoot = process.getuid?.() === 0;
const TEST_TIMEOUT_MS = 180_000;
const HOOK_TIMEOUT_MS = 60_000;

beforeAll(async () => {
  if (isRoot) await sweepOrphanedSandboxes();
}, HOOK_TIMEOUT_MS);

/** Whether `pid` runs (a zombie — exited, not yet reaped by whoever adopted it — does not). */
async function running(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return stat !== undefined && stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
}

describe.skipIf(!isRoot)('berth CLI habits', { timeout: TEST_TIMEOUT_MS }, () => {
  let sandbox: BerthSandbox;
  const volumeIds = new Set<string>();

  beforeEach(async () => {
    sandbox = await makeSandbox();
  }, HOOK_TIMEOUT_MS);

  afterEach(async () => {
    await sandbox.remove();
    await removeBerthLinks(volumeIds);
    volumeIds.clear();
  }, HOOK_TIMEOUT_MS);

  async function createVolume(name: string, ...extra: string[]): Promise<Volume> {
    const volume = await sandbox.json<Volume>(['volume', 'create', '--size', '16MiB', '--name', name, ...extra]);
    volumeIds.add(volume.id);
    return volume;
  }

  /** `berth ARGS` on a pseudo-terminal (util-linux `script`), typing `answer` at its prompt. */
  async function onTerminal(args: readonly string[], answer: string): Promise<{ exitCode: number; output: string }> {
    const command = [process.execPath, BERTH_BIN, ...args].map((word) => `'${word.replaceAll("'", "'\\''")}'`).join(' ');
    const result = await execa('script', ['--quiet', '--return', '--command', command, '/dev/null'], {
      input: `${answer}\n`,
      env: { ...sandbox.env, PATH: process.env['PATH'] ?? '' },
      extendEnv: false,
      reject: false,
      timeout: 90_000,
    });
    return { exitCode: result.exitCode ?? -1, output: String(result.stdout) };
  }

  it('destructive commands ask on a terminal, need --yes without one, and the aliases work', async () => {
    const volume = await createVolume('keep1');
    expect((await sandbox.json<Volume[]>(['volume', 'ls'])).map((v) => v.name)).toEqual(['keep1']);

    // No terminal (stdin is not a TTY here): refused with the way out, nothing changed.
    const refused = await sandbox.run(['volume', 'rm', 'keep1']);
    expect(refused.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(refused.stderr).toMatch(/^Error: Delete volume keep1 .*: this asks for confirmation, and there is no terminal to ask on$/m);
    expect(refused.stderr).toMatch(/^Hint: confirm with --yes: `berth volume delete keep1 --yes`$/m);
    const reconcile = await sandbox.run(['reconcile', '--json']);
    expect(reconcile.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(errorBody(reconcile).hint).toContain('--yes');

    // On a terminal: "n" keeps it (CANCELLED), "y" deletes it.
    const no = await onTerminal(['volume', 'delete', 'keep1'], 'n');
    expect(no.output).toMatch(/Delete volume keep1 \(.*\) and its storage\? \[y\/N\]/);
    expect(no.exitCode).toBe(EXIT_CODES.CANCELLED);
    expect((await sandbox.json<Volume[]>(['volume', 'list'])).map((v) => v.id)).toEqual([volume.id]);
    const yes = await onTerminal(['volume', 'delete', 'keep1'], 'y');
    expect(yes.exitCode, yes.output).toBe(0);
    expect(await sandbox.json<Volume[]>(['volume', 'list'])).toEqual([]);

    await createVolume('gone1');
    // What cannot happen is refused before the question (an attached volume), terminal or not.
    await sandbox.json(['attach', 'gone1']);
    const inUse = await onTerminal(['volume', 'delete', 'gone1'], 'y');
    expect(inUse.exitCode).toBe(EXIT_CODES.CONFLICT);
    expect(inUse.output).not.toContain('[y/N]');
    expect(inUse.output).toContain('detach it first');
    await sandbox.json(['detach', 'gone1']);
    expect((await sandbox.json<{ deleted: boolean }>(['volume', 'rm', 'gone1', '-y'])).deleted).toBe(true);
    expect(await sandbox.json<unknown[]>(['attachment', 'ls'])).toEqual([]);
  });

  it('takes global flags before the command, and words unknown commands and usage errors as berth does', async () => {
    const other = join(sandbox.root, 'other-data');
    const listed = await sandbox.run(['--data-dir', other, '--json', 'volume', 'list']);
    expect(listed.exitCode, listed.stderr).toBe(0);
    expect(JSON.parse(listed.stdout)).toEqual([]);
    expect(existsSync(join(other, 'berth.db'))).toBe(true);

    const unknown = await sandbox.run(['volume', 'lst']);
    expect(unknown.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(unknown.stderr.trim().split('\n')).toEqual([
      'Error: `volume lst` is not a berth command',
      'Hint: did you mean `berth volume list`? `berth help volume` lists the commands',
    ]);

    const missing = await sandbox.run(['volume', 'create', '--size', '1GiB']);
    expect(missing.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(missing.stderr.trim().split('\n')).toEqual([
      "Error: missing the volume's name",
      'Hint: for example `berth volume create data1 --size 1GiB`; more in `berth volume create --help`',
    ]);
    // The name as an argument (as `server create NAME`), or --name; two different ones are refused.
    const byArgument = await sandbox.run(['--json', 'volume', 'create', 'named1', '--size', '1MiB']);
    expect(byArgument.exitCode, byArgument.stderr).toBe(0);
    expect((JSON.parse(byArgument.stdout) as { name: string }).name).toBe('named1');
    const twice = await sandbox.run(['volume', 'create', 'named2', '--name', 'named3', '--size', '1MiB']);
    expect(twice.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(twice.stderr).toMatch(/^Error: two names given: "named2" and --name "named3"$/m);
    // Words a command does not take are named as such, not read as an unknown command.
    const extra = await sandbox.run(['volume', 'list', 'named1']);
    expect(extra.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(extra.stderr.trim().split('\n')).toEqual(['Error: `berth volume list` takes no argument "named1"', 'Hint: `berth volume list --help` shows what it takes']);
    const noArg = await sandbox.run(['attach']);
    expect(noArg.stderr).toMatch(/^Error: missing argument VOLUME \(Volume name or id\)$/m);
  });

  it('asks "Did you mean …?" about an unknown command on a terminal: yes runs it, no is the usage error', async () => {
    // `script` gives berth a terminal (stdin and stderr), as a person typing has.
    const onTerminal = (answer: string) =>
      execa('script', ['-qec', `${process.execPath} ${BERTH_BIN} volume lst; echo "exit=$?"`, '/dev/null'], {
        input: `${answer}\n`,
        env: { ...inheritedEnv(), ...sandbox.env },
        extendEnv: false,
        reject: false,
        timeout: 60_000,
      });
    const yes = await onTerminal('y');
    expect(yes.stdout).toContain('Did you mean');
    expect(yes.stdout).toContain('No volumes.');
    expect(yes.stdout).toMatch(/exit=0\s*$/);
    // "No" was an "unexpected error" (exit 1) before, and with the CLI's bundle every unknown
    // command on a terminal was ("default.call is not a function").
    const no = await onTerminal('n');
    expect(no.stdout).toContain('Error: `volume lst` is not a berth command');
    expect(no.stdout).toContain('Hint: did you mean `berth volume list`? `berth help volume` lists the commands');
    expect(no.stdout).not.toContain('unexpected error');
    expect(no.stdout).toMatch(new RegExp(`exit=${EXIT_CODES.VALIDATION}\\s*$`));
  });

  it('keeps the log in <data dir>/logs/berth.log: a failed command shows its error and hint only', async () => {
    const volume = await createVolume('lost1');
    // The volume's file is gone: the attach fails in its initialize step, which logs a warning.
    await execa('rm', ['-f', volume.providerLocation ?? '']);
    const failed = await sandbox.run(['attach', 'lost1']);
    expect(failed.exitCode).toBe(EXIT_CODES.NOT_FOUND);
    expect(failed.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^Error: the file of volume .* does not exist/), expect.stringMatching(/^Hint: /)]);
    const log = await readFile(join(sandbox.dataDir, 'logs', 'berth.log'), 'utf8');
    expect(log.trim().split('\n').map((line) => (JSON.parse(line) as { step?: string }).step)).toContain('initialize');

    const verbose = await sandbox.run(['attach', 'lost1', '--verbose']);
    expect(verbose.stderr).toMatch(/^\{"level":/m);
    expect(verbose.stderr).toMatch(/^Error: the file of volume/m);
  });

  it('names the servers when a multiattach detach needs one, and extend speaks in sizes', async () => {
    const shared = await createVolume('shared1', '--multiattach');
    await sandbox.json(['server', 'create', 'web-1']);
    await sandbox.json(['server', 'create', 'web-2']);
    await sandbox.json(['attach', 'shared1', '--server', 'web-1']);
    await sandbox.json(['attach', 'shared1', '--server', 'web-2']);
    const ambiguous = await sandbox.run(['detach', 'shared1']);
    expect(ambiguous.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(ambiguous.stderr).toMatch(/^Error: volume shared1 is attached to 2 servers: web-\d, web-\d$/m);
    expect(ambiguous.stderr).toContain('`berth detach shared1 --server web-1`');
    expect(ambiguous.stderr).toContain('`berth detach shared1 --server web-2`');
    await sandbox.json(['detach', 'shared1', '--server', 'web-1']);
    await sandbox.json(['detach', 'shared1', '--server', 'web-2']);

    const smaller = await sandbox.run(['volume', 'extend', shared.name, '--size', '8MiB']);
    expect(smaller.exitCode).toBe(EXIT_CODES.VALIDATION);
    expect(smaller.stderr).toMatch(/^Error: volume shared1 is already 16 MiB; --size 8MiB \(8 MiB\) does not grow it$/m);
    expect(smaller.stderr).toMatch(/^Hint: give a size larger than 16 MiB, such as --size 17MiB/m);
  });

  it("`berth backend stop tgt` stops berth's own tgtd; the next tgt volume starts it again", async () => {
    const controlPort = await freeControlPort();
    await mkdir(sandbox.dataDir, { recursive: true });
    await writeFile(
      join(sandbox.dataDir, 'config.json'),
      JSON.stringify({ pluginOptions: { '@berth/backend-tgt': { portals: [`127.0.0.1:${await freePort()}`], controlPort } } }),
    );
    const notRunning = await sandbox.json<{ wasRunning: boolean }>(['backend', 'stop', 'tgt']);
    expect(notRunning.wasRunning).toBe(false);
    try {
      const { pidFile } = managedTgtdPaths(sandbox.dataDir);
      const daemonPid = async (): Promise<number> => (JSON.parse(await readFile(pidFile, 'utf8')) as { pid: number }).pid;
      await createVolume('lun1', '--backend', 'tgt');
      const pid = await daemonPid();
      expect(await running(pid)).toBe(true);

      const stopped = await sandbox.run(['backend', 'stop', 'tgt']);
      expect(stopped.exitCode, stopped.stderr).toBe(0);
      expect(stopped.stdout).toContain(`Stopped berth's tgtd (pid ${pid}, control port ${controlPort})`);
      expect(await running(pid)).toBe(false);

      // The next volume the tgt backend exports starts it again.
      await createVolume('lun2', '--backend', 'tgt');
      const again = await daemonPid();
      expect(again).not.toBe(pid);
      expect(await running(again)).toBe(true);
      await sandbox.json(['volume', 'delete', 'lun1', '--yes']);
      await sandbox.json(['volume', 'delete', 'lun2', '--yes']);
    } finally {
      await sandbox.run(['backend', 'stop', 'tgt']);
    }
  });
});
