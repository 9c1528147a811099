import type { ToolResult } from './tool-protocol.js';

// The fake tools' wire format (the C client `tool-client/simhost-tool.c` speaks it too): binary
// and length-prefixed, so a client needs no JSON. Integers are little-endian u32 (the exit code
// i32). Control calls from `SimulatedHost` stay JSON lines on the same socket; a request's first
// bytes tell which.

/** The first bytes of a tool call. */
export const TOOL_MAGIC = Buffer.from('BTOOL1\n', 'latin1');

/** One run of a fake tool: its name, its arguments and (tee) what it read on stdin. */
export interface ToolCall {
  tool: string;
  argv: string[];
  stdin: Buffer;
}

/** Whether the bytes received so far start a tool call (rather than a JSON control line). */
export function isToolCall(received: Buffer): boolean {
  const n = Math.min(received.length, TOOL_MAGIC.length);
  return n > 0 && received.subarray(0, n).equals(TOOL_MAGIC.subarray(0, n));
}

/** The tool call in `received`, or undefined while it is incomplete. */
export function decodeToolCall(received: Buffer): ToolCall | undefined {
  let at = TOOL_MAGIC.length;
  const u32 = (): number | undefined => {
    if (received.length < at + 4) return undefined;
    const v = received.readUInt32LE(at);
    at += 4;
    return v;
  };
  const bytes = (): Buffer | undefined => {
    const len = u32();
    if (len === undefined || received.length < at + len) return undefined;
    const out = received.subarray(at, at + len);
    at += len;
    return out;
  };
  const count = u32();
  if (count === undefined || count < 1) return undefined;
  const words: string[] = [];
  for (let i = 0; i < count; i++) {
    const word = bytes();
    if (word === undefined) return undefined;
    words.push(word.toString('utf8'));
  }
  const stdin = bytes();
  if (stdin === undefined) return undefined;
  const [tool, ...argv] = words as [string, ...string[]];
  return { tool, argv, stdin: Buffer.from(stdin) };
}

/** Encode a tool call (the Node fallback client's side). */
export function encodeToolCall(call: ToolCall): Buffer {
  const parts: Buffer[] = [TOOL_MAGIC, u32le(call.argv.length + 1)];
  for (const word of [call.tool, ...call.argv]) {
    const b = Buffer.from(word, 'utf8');
    parts.push(u32le(b.length), b);
  }
  parts.push(u32le(call.stdin.length), call.stdin);
  return Buffer.concat(parts);
}

/** Encode what a tool prints and returns. */
export function encodeToolResult(result: ToolResult): Buffer {
  const out = Buffer.from(result.stdout, 'utf8');
  const err = Buffer.from(result.stderr, 'utf8');
  const code = Buffer.alloc(4);
  code.writeInt32LE(result.exitCode);
  return Buffer.concat([code, u32le(out.length), out, u32le(err.length), err]);
}

/** The tool result in `received`, or undefined while it is incomplete. */
export function decodeToolResult(received: Buffer): ToolResult | undefined {
  if (received.length < 8) return undefined;
  const exitCode = received.readInt32LE(0);
  const outLen = received.readUInt32LE(4);
  if (received.length < 8 + outLen + 4) return undefined;
  const errLen = received.readUInt32LE(8 + outLen);
  if (received.length < 12 + outLen + errLen) return undefined;
  return {
    exitCode,
    stdout: received.subarray(8, 8 + outLen).toString('utf8'),
    stderr: received.subarray(12 + outLen, 12 + outLen + errLen).toString('utf8'),
  };
}

function u32le(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
}
