import type { CommandResult, CommandRunner } from '@berth/host';
import { wireLun } from '@berth/qemu';
import type { LoginAuth } from '../target-access.js';

/** Default deadline of one libiscsi tool run, in ms (a login on loopback takes ~3 ms). */
export const DEFAULT_LIBISCSI_TIMEOUT_MS = 15_000;

/** Who logs in where. */
export interface LibiscsiEndpoint {
  /** `host:port` or `[v6]:port`. */
  portal: string;
  /** The initiator IQN sent in the login (`-i`). */
  initiator: string;
  auth?: LoginAuth;
}

/** Options of one tool run. */
export interface LibiscsiRunOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/**
 * Runs libiscsi's command-line tools through the CommandRunner. CHAP credentials travel in the
 * `LIBISCSI_CHAP_*` environment variables, never in the URL: a URL is an argument, and arguments
 * are visible to every user in `ps`.
 */
export class LibiscsiClient {
  constructor(
    private readonly runner: CommandRunner,
    private readonly timeoutMs = DEFAULT_LIBISCSI_TIMEOUT_MS,
  ) {}

  /** `iscsi-ls [-s] -i INITIATOR iscsi://PORTAL`: SendTargets discovery (and REPORT LUNS with `showLuns`). */
  ls(endpoint: LibiscsiEndpoint, showLuns: boolean, options: LibiscsiRunOptions = {}): Promise<CommandResult> {
    return this.run('iscsi-ls', [...(showLuns ? ['-s'] : []), '-i', endpoint.initiator, `iscsi://${endpoint.portal}`], endpoint, options);
  }

  /** `iscsi-inq` of a LUN: the standard INQUIRY, or VPD page `page` (128 = 0x80, 131 = 0x83). */
  inquiry(endpoint: LibiscsiEndpoint, iqn: string, lun: number, page?: number, options: LibiscsiRunOptions = {}): Promise<CommandResult> {
    const vpd = page === undefined ? [] : ['-e', '1', '-c', String(page)];
    return this.run('iscsi-inq', ['-i', endpoint.initiator, ...vpd, lunUrl(endpoint.portal, iqn, lun)], endpoint, options);
  }

  /** `iscsi-readcapacity16` of a LUN. */
  readCapacity16(endpoint: LibiscsiEndpoint, iqn: string, lun: number, options: LibiscsiRunOptions = {}): Promise<CommandResult> {
    return this.run('iscsi-readcapacity16', ['-i', endpoint.initiator, lunUrl(endpoint.portal, iqn, lun)], endpoint, options);
  }

  private run(tool: string, args: string[], endpoint: LibiscsiEndpoint, options: LibiscsiRunOptions): Promise<CommandResult> {
    const { env, secrets } = chapEnvironment(endpoint.auth);
    return this.runner.run(tool, args, {
      env,
      secrets,
      reject: false,
      timeoutMs: options.timeoutMs ?? this.timeoutMs,
      ...(options.signal ? { signal: options.signal } : {}),
    });
  }
}

/** The URL of a LUN, with the LUN addressed as tgtd reports it (flat addressing above 255). */
export function lunUrl(portal: string, iqn: string, lun: number): string {
  return `iscsi://${portal}/${iqn}/${wireLun(lun)}`;
}

/** The environment that makes libiscsi log in with `auth` (mutual CHAP included), and the values to mask. */
export function chapEnvironment(auth: LoginAuth | undefined): { env: Record<string, string>; secrets: string[] } {
  if (!auth) return { env: {}, secrets: [] };
  const env: Record<string, string> = { LIBISCSI_CHAP_USERNAME: auth.username, LIBISCSI_CHAP_PASSWORD: auth.password };
  const secrets = [auth.password];
  if (auth.usernameIn !== undefined && auth.passwordIn !== undefined) {
    env.LIBISCSI_CHAP_TARGET_USERNAME = auth.usernameIn;
    env.LIBISCSI_CHAP_TARGET_PASSWORD = auth.passwordIn;
    secrets.push(auth.passwordIn);
  }
  return { env, secrets };
}
