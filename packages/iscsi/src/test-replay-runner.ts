import { CommandError, formatCommand, redact, type CommandResult, type CommandRunner, type RunOptions } from '@berth/host';
import type { RecordedCommand } from '@berth/testkit/fixtures';

/** What a scripted command returns. */
export interface Reply {
  exitCode?: number;
  stdout?: string;
  stderr?: string;
  timedOut?: boolean;
  aborted?: boolean;
  notFound?: boolean;
}

/** One command the runner was asked to run. */
export interface RunCall {
  file: string;
  args: string[];
  options: RunOptions;
  /** The command line a real runner logs and puts in errors (secrets masked). */
  logged: string;
}

/** A reply replaying a recorded fixture's exit code and output. */
export function replyOf(recorded: RecordedCommand): Reply {
  return { exitCode: recorded.rc, stdout: recorded.stdout, stderr: recorded.stderr };
}

/**
 * A CommandRunner that runs nothing: it answers each command with a scripted reply and keeps the
 * calls, with the masked command line a real runner would log.
 */
export class ReplayRunner implements CommandRunner {
  readonly calls: RunCall[] = [];

  constructor(private readonly respond: (args: string[], call: RunCall) => Reply | Promise<Reply>) {}

  /** Answer each command with the fixture whose `# cmd:` is exactly `file args…`; anything else fails the test. */
  static fromFixtures(fixtures: readonly RecordedCommand[]): ReplayRunner {
    return new ReplayRunner((args, call) => {
      const line = [call.file, ...args].join(' ');
      const recorded = fixtures.find((f) => f.cmd === line);
      if (recorded === undefined) throw new Error(`no recorded output for: ${line}`);
      return replyOf(recorded);
    });
  }

  /** Answer the n-th command with the n-th reply (the last one repeats). */
  static sequence(replies: readonly Reply[]): ReplayRunner {
    let next = 0;
    return new ReplayRunner(() => {
      const reply = replies[Math.min(next++, replies.length - 1)];
      if (reply === undefined) throw new Error('no reply scripted');
      return reply;
    });
  }

  async run(file: string, args: readonly string[], options: RunOptions = {}): Promise<CommandResult> {
    const secrets = options.secrets ?? [];
    const call: RunCall = { file, args: [...args], options, logged: formatCommand(file, args, secrets) };
    this.calls.push(call);
    const reply: Reply = options.signal?.aborted ? { exitCode: -1, aborted: true } : await this.respond([...args], call);
    const result: CommandResult = {
      command: call.logged,
      exitCode: reply.exitCode ?? 0,
      stdout: reply.stdout ?? '',
      stderr: reply.stderr ?? '',
      durationMs: 1,
      timedOut: reply.timedOut ?? false,
      aborted: reply.aborted ?? false,
      ...(reply.notFound === true ? { notFound: true } : {}),
    };
    const failed = result.exitCode !== 0 || result.timedOut || result.aborted || reply.notFound === true;
    if (failed && options.reject !== false) {
      throw new CommandError(
        { ...result, stdout: redact(result.stdout, secrets), stderr: redact(result.stderr, secrets) },
        { notFound: reply.notFound === true },
      );
    }
    return result;
  }
}
