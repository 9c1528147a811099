import net from 'node:net';

/** What a fake tool prints and returns. */
export interface ToolResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/** A control call from a `SimulatedHost` attached to a detached daemon. */
export interface ControlRequest {
  type: 'control';
  method: string;
  params?: unknown;
}

/** The daemon's answer to a control call. */
export type ControlResponse = { ok: true; result?: unknown } | { ok: false; error: string; code?: string };

/** Where the kernel daemon listens, under the simulated root. */
export const SOCKET_RELATIVE = 'run/simhost/kernel.sock';
/** Where the detached daemon writes its pid. */
export const PIDFILE_RELATIVE = 'run/simhost/kernel.pid';

/**
 * One control call over the daemon's socket: a JSON line out, a JSON line back (tool runs use
 * the binary format of `tool-wire.ts`). Rejects when the
 * socket cannot be reached (no daemon).
 */
export function sendRequest<T>(socketPath: string, request: ControlRequest, timeoutMs = 120_000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const socket = net.createConnection(socketPath);
    let buffer = '';
    let settled = false;
    const finish = (error: Error | undefined, value?: T): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(value as T);
    };
    const timer = setTimeout(() => finish(new Error(`no answer from the simulated kernel at ${socketPath} within ${timeoutMs} ms`)), timeoutMs);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      const nl = buffer.indexOf('\n');
      if (nl < 0) return;
      try {
        finish(undefined, JSON.parse(buffer.slice(0, nl)) as T);
      } catch (error) {
        finish(error as Error);
      }
    });
    socket.on('error', (error) => finish(error));
    socket.on('close', () => finish(new Error(`the simulated kernel at ${socketPath} closed the connection`)));
  });
}
