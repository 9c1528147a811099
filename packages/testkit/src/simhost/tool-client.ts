import { sendRequest, type ToolResult } from './tool-protocol.js';

// What each tool says when the kernel daemon (iscsid) cannot be reached.
const OFFLINE: Readonly<Record<string, ToolResult>> = {
  iscsiadm: { stdout: '', stderr: 'iscsiadm: can not connect to iSCSI daemon (111)!\n', exitCode: 20 },
  // uxclnt: no socket, exit 1 without a word.
  multipathd: { stdout: '', stderr: '', exitCode: 1 },
};

/**
 * The body of a fake tool in `<root>/bin`: send argv to the kernel daemon, print what it answers,
 * exit with its code. Kept to `node:net` so a tool starts fast.
 */
export async function runTool(tool: string, socketPath: string): Promise<void> {
  let result: ToolResult;
  try {
    result = await sendRequest<ToolResult>(socketPath, { type: 'tool', tool, argv: process.argv.slice(2) });
  } catch {
    result = OFFLINE[tool] ?? { stdout: '', stderr: `${tool}: the simulated host is not running\n`, exitCode: 1 };
  }
  process.stdout.write(result.stdout);
  process.stderr.write(result.stderr);
  process.exitCode = result.exitCode;
}
