import {
  ModelTargetAccess,
  type LoginAuth,
  type LoginRequest,
  type LoginResult,
  type TargetAccess,
  type TargetSession,
} from '@berth/simhost';

/**
 * The simulator's model SAN, except that SendTargets lists **every** portal of each target it
 * returns, as most arrays do (tgtd lists only the portal asked: KERNEL-MODEL §6). This is what the
 * transport's multi-portal discovery is tested against.
 */
export class AdvertisingTargetAccess implements TargetAccess {
  readonly model: ModelTargetAccess;

  constructor(workDir: string) {
    this.model = new ModelTargetAccess({ workDir });
  }

  login(request: LoginRequest): Promise<{ result: LoginResult; session?: TargetSession }> {
    return this.model.login(request);
  }

  async discover(portal: string, initiator: string, auth?: LoginAuth): ReturnType<TargetAccess['discover']> {
    const answer = await this.model.discover(portal, initiator, auth);
    if (!answer.ok) return answer;
    const targets = await this.model.targets();
    const out: Array<{ portal: string; tpgt: number; iqn: string }> = [];
    for (const found of answer.targets) {
      const target = targets.find((t) => t.iqn === found.iqn);
      for (const p of target?.portals ?? [found.portal]) out.push({ portal: p, tpgt: found.tpgt, iqn: found.iqn });
    }
    return { ok: true, targets: out };
  }

  close(): Promise<void> {
    return this.model.close();
  }
}
