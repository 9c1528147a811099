import type { CommandRunner } from '@berth/host';
import { ModelTargetAccess } from './model-target-access.js';
import type { LoginAuth, LoginRequest, LoginResult, LunDisk, LunInquiry, TargetAccess, TargetSession } from './target-access.js';

/**
 * The simulator's model SAN with every opened LUN put behind a real loop device, so the
 * simulated `/dev/sdX` is a real block device node (the transport conformance suite checks
 * that). Loop devices are machine-global: `sweep()` detaches any this access left behind.
 */
export class LoopBackedTargetAccess implements TargetAccess {
  readonly model: ModelTargetAccess;
  private readonly loops = new Set<LoopDisk>();

  constructor(
    readonly workDir: string,
    private readonly runner: CommandRunner,
  ) {
    this.model = new ModelTargetAccess({ workDir });
  }

  async login(request: LoginRequest): Promise<{ result: LoginResult; session?: TargetSession }> {
    const outcome = await this.model.login(request);
    if (outcome.session === undefined) return outcome;
    return { result: outcome.result, session: new LoopSession(outcome.session, this.runner, this.loops) };
  }

  discover(portal: string, initiator: string, auth?: LoginAuth): ReturnType<TargetAccess['discover']> {
    return this.model.discover(portal, initiator, auth);
  }

  async close(): Promise<void> {
    await Promise.all([...this.loops].map((l) => l.close()));
    await this.model.close();
  }

  /** Detach every loop device still backed by a file under the work dir (after a crash). */
  async sweep(): Promise<void> {
    const listed = await this.runner.run('losetup', ['--json', '--list'], { timeoutMs: 10_000, reject: false });
    if (listed.exitCode !== 0 || listed.stdout.trim() === '') return;
    const devices = (JSON.parse(listed.stdout) as { loopdevices?: Array<{ name: string; 'back-file': string | null }> }).loopdevices ?? [];
    for (const d of devices) {
      if (d['back-file']?.startsWith(this.workDir + '/') === true) {
        await this.runner.run('losetup', ['--detach', d.name], { timeoutMs: 10_000, reject: false });
      }
    }
  }
}

class LoopSession implements TargetSession {
  constructor(
    private readonly inner: TargetSession,
    private readonly runner: CommandRunner,
    private readonly loops: Set<LoopDisk>,
  ) {}

  get portal(): string {
    return this.inner.portal;
  }

  get iqn(): string {
    return this.inner.iqn;
  }

  get initiator(): string {
    return this.inner.initiator;
  }

  reportLuns(): Promise<number[]> {
    return this.inner.reportLuns();
  }

  async inquiry(lun: number): Promise<LunInquiry | undefined> {
    return this.inner.inquiry?.(lun);
  }

  async openLun(lun: number): Promise<LunDisk | undefined> {
    const disk = await this.inner.openLun(lun);
    if (disk === undefined) return undefined;
    const result = await this.runner.run('losetup', ['--find', '--show', disk.backingPath], { timeoutMs: 10_000 });
    const loop = new LoopDisk(disk, result.stdout.trim(), this.runner, this.loops);
    this.loops.add(loop);
    return loop;
  }

  async logout(): Promise<void> {
    await this.inner.logout();
  }
}

class LoopDisk implements LunDisk {
  readonly isBlockDevice = true;
  private closed = false;

  constructor(
    private readonly inner: LunDisk,
    readonly backingPath: string,
    private readonly runner: CommandRunner,
    private readonly loops: Set<LoopDisk>,
  ) {}

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }
  get vendor(): string {
    return this.inner.vendor;
  }
  get model(): string {
    return this.inner.model;
  }
  get rev(): string {
    return this.inner.rev;
  }
  get wwid(): string {
    return this.inner.wwid;
  }
  get vpdPg83(): Buffer {
    return this.inner.vpdPg83;
  }
  get vpdPg80(): Buffer {
    return this.inner.vpdPg80;
  }

  async refresh(): Promise<void> {
    await this.inner.refresh();
    await this.runner.run('losetup', ['--set-capacity', this.backingPath], { timeoutMs: 10_000, reject: false });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.loops.delete(this);
    await this.runner.run('losetup', ['--detach', this.backingPath], { timeoutMs: 10_000, reject: false });
    await this.inner.close();
  }
}
