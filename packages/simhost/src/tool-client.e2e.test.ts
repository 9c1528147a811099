import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { createCommandRunner } from '@berth/host';
import { afterEach, describe, expect, it } from 'vitest';
import { compiledToolClientPath, toolClientPath } from './kernel-daemon.js';
import { callTool } from './tool-client.js';
import { SimulatedHost } from './simulated-host.js';
import { decodeToolCall, decodeToolResult, encodeToolCall, encodeToolResult, isToolCall } from './tool-wire.js';

// The fake tools are one small compiled client: a call costs about what a real tool's does, so
// the simulator's timings mean something (bench `simhost-tool` prints the ratio).

let sim: SimulatedHost | undefined;
let root: string | undefined;

afterEach(async () => {
  await sim?.stop();
  sim = undefined;
  if (root) await fsp.rm(root, { recursive: true, force: true });
  root = undefined;
});

describe('the fake tools\' client', { timeout: 60_000 }, () => {
  it('is the compiled C client, copied into bin/ for every tool (the build compiles it with cc)', async () => {
    const compiled = compiledToolClientPath();
    expect(compiled, 'dist/simhost-tool: run `npm run build` (needs cc: scripts/install-system-deps.sh)').toBeDefined();
    sim = await SimulatedHost.start();
    for (const tool of ['iscsiadm', 'multipath', 'multipathd', 'blockdev', 'tee']) {
      const head = (await fsp.readFile(path.join(sim.binDir, tool))).subarray(0, 4);
      expect(head.toString('latin1'), tool).toBe('\x7fELF');
    }
    const { runner } = sim.hostServices();
    expect(await runner.run('iscsiadm', ['-m', 'session'], { reject: false })).toMatchObject({ exitCode: 21, stdout: '', stderr: 'iscsiadm: No active sessions.\n' });
    // Arguments reach the daemon byte for byte (spaces, quotes, UTF-8, empty ones).
    const odd = await runner.run('iscsiadm', ['-m', 'node', '-T', 'iqn.2026-01.test:a b "c" é', '-p', '', '--op', 'show'], { reject: false });
    expect(odd.exitCode).toBe(21);
    // The same call without a process (the bench times the daemon's share with it).
    const socket = path.join(sim.root, 'run/simhost/kernel.sock');
    expect(await callTool(socket, { tool: 'iscsiadm', argv: ['-m', 'session'], stdin: Buffer.alloc(0) })).toEqual({ exitCode: 21, stdout: '', stderr: 'iscsiadm: No active sessions.\n' });
  });

  it('says what the real tools say when the daemon is gone: iscsiadm 20, multipathd silent 1', async () => {
    root = await fsp.mkdtemp(path.join(os.tmpdir(), 'berth-simtool-'));
    sim = await SimulatedHost.start({ root });
    await sim.stop();
    sim = undefined;
    const runner = createCommandRunner({ defaultTimeoutMs: 10_000 });
    const bin = (tool: string): string => path.join(root!, 'bin', tool);
    expect(await runner.run(bin('iscsiadm'), ['-m', 'session'], { reject: false })).toMatchObject({
      exitCode: 20,
      stdout: '',
      stderr: 'iscsiadm: can not connect to iSCSI daemon (111)!\n',
    });
    expect(await runner.run(bin('multipathd'), ['show', 'paths'], { reject: false })).toMatchObject({ exitCode: 1, stdout: '', stderr: '' });
    expect(await runner.run(bin('blockdev'), ['--getsize64', '/dev/sda'], { reject: false })).toMatchObject({
      exitCode: 1,
      stderr: 'blockdev: the simulated host is not running\n',
    });
  });

  it('answers as the Node fallback client does (the same wire format)', async () => {
    sim = await SimulatedHost.start();
    const script = path.join(sim.root, 'run/node-iscsiadm');
    const socket = path.join(sim.root, 'run/simhost/kernel.sock');
    const body = (tool: string): string =>
      `#!${process.execPath}\nimport(${JSON.stringify(pathToFileURL(toolClientPath()).href)}).then((m) => m.runTool(${JSON.stringify(tool)}, ${JSON.stringify(socket)}));\n`;
    await fsp.writeFile(script, body('iscsiadm'), { mode: 0o755 });
    const { runner } = sim.hostServices();
    for (const args of [['-m', 'session'], ['--version'], ['-m', 'node', '--op', 'bogus']]) {
      const compiled = await runner.run('iscsiadm', args, { reject: false });
      const node = await runner.run(script, args, { reject: false });
      expect([node.exitCode, node.stdout, node.stderr], args.join(' ')).toEqual([compiled.exitCode, compiled.stdout, compiled.stderr]);
    }
    const teeScript = path.join(sim.root, 'run/node-tee');
    await fsp.writeFile(teeScript, body('tee'), { mode: 0o755 });
    const target = path.join(sim.root, 'run/tee-target');
    expect(await runner.run(teeScript, [target], { input: 'through node\n' })).toMatchObject({ exitCode: 0, stdout: 'through node\n' });
    expect(await fsp.readFile(target, 'utf8')).toBe('through node\n');
  });

  it('frames calls and results so that partial reads wait for the rest', () => {
    const call = { tool: 'tee', argv: ['-a', '/sys/x', ''], stdin: Buffer.from('1\n') };
    const bytes = encodeToolCall(call);
    expect(isToolCall(bytes.subarray(0, 3))).toBe(true);
    expect(isToolCall(Buffer.from('{"type":"control"}'))).toBe(false);
    for (let n = 0; n < bytes.length; n++) expect(decodeToolCall(bytes.subarray(0, n))).toBeUndefined();
    expect(decodeToolCall(bytes)).toEqual(call);
    const result = { exitCode: -1, stdout: 'ünïcode\n', stderr: '' };
    const reply = encodeToolResult(result);
    for (let n = 0; n < reply.length; n++) expect(decodeToolResult(reply.subarray(0, n))).toBeUndefined();
    expect(decodeToolResult(reply)).toEqual(result);
  });
});
