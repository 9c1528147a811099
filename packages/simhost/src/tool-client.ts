import net from 'node:net';
import { decodeToolResult, encodeToolCall, type ToolCall } from './tool-wire.js';
import type { ToolResult } from './tool-protocol.js';

// What each tool says when the kernel daemon (iscsid) cannot be reached (as simhost-tool.c).
const OFFLINE: Readonly<Record<string, ToolResult>> = {
  iscsiadm: { stdout: '', stderr: 'iscsiadm: can not connect to iSCSI daemon (111)!\n', exitCode: 20 },
  // uxclnt: no socket, exit 1 without a word.
  multipathd: { stdout: '', stderr: '', exitCode: 1 },
};

/**
 * The body of a fake tool in `<root>/bin` when no C compiler built `simhost-tool`: the same
 * wire format as the C client, one Node start per call (slow: 100-250 ms).
 */
export async function runTool(tool: string, socketPath: string): Promise<void> {
  let result: ToolResult;
  try {
    const stdin = tool === 'tee' ? await readAll(process.stdin) : Buffer.alloc(0);
    result = await callTool(socketPath, { tool, argv: process.argv.slice(2), stdin });
  } catch {
    result = OFFLINE[tool] ?? { stdout: '', stderr: `${tool}: the simulated host is not running\n`, exitCode: 1 };
  }
  process.stdout.write(result.stdout);
  process.stderr.write(result.stderr);
  process.exitCode = result.exitCode;
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks);
}

/**
 * One fake tool call on the kernel daemon's socket, in this process: what a tool's client
 * sends and gets back, without the process (the bench times the daemon's share with it).
 */
export function callTool(socketPath: string, toolCall: ToolCall): Promise<ToolResult> {
  const request = encodeToolCall(toolCall);
  return new Promise<ToolResult>((resolve, reject) => {
    const socket = net.createConnection(socketPath);
    let received = Buffer.alloc(0);
    socket.on('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const result = decodeToolResult(received);
      if (result) {
        socket.destroy();
        resolve(result);
      }
    });
    socket.on('error', reject);
    socket.on('close', () => reject(new Error(`the simulated kernel at ${socketPath} closed the connection`)));
  });
}
