/** What this driver instance knows about one target (IQN + portal) beyond what sysfs shows. */
export interface TargetUse {
  /**
   * Connects past session setup whose device is not there yet. sysfs cannot show them, so a
   * disconnect of another LUN must not log out while any is counted.
   */
  inflight: number;
  /**
   * Set when a connect of this driver logged in and no connect of the target has finished since:
   * the session is this driver's to log out again if every such connect fails.
   */
  pendingLogin?: { createdRecord: boolean };
}

/** `TargetUse` per target key; entries with nothing to remember are dropped. */
export class TargetUsage {
  private readonly uses = new Map<string, TargetUse>();

  /** The use of `key` (a fresh, empty one when nothing is known). */
  peek(key: string): Readonly<TargetUse> {
    return this.uses.get(key) ?? { inflight: 0 };
  }

  /** A connect of `key` is past its session setup. */
  enter(key: string, login?: { createdRecord: boolean }): void {
    const use = this.uses.get(key) ?? { inflight: 0 };
    use.inflight += 1;
    if (login !== undefined) use.pendingLogin = login;
    this.uses.set(key, use);
  }

  /**
   * A connect of `key` is over: `succeeded` means its device is there, so the session is in use
   * and the normal disconnect rules apply to it from now on.
   */
  leave(key: string, succeeded: boolean): void {
    const use = this.uses.get(key);
    if (use === undefined) return;
    use.inflight = Math.max(0, use.inflight - 1);
    if (succeeded) delete use.pendingLogin;
    this.drop(key, use);
  }

  /** The session of `key` was logged out (or never was ours): forget the pending login. */
  clearLogin(key: string): void {
    const use = this.uses.get(key);
    if (use === undefined) return;
    delete use.pendingLogin;
    this.drop(key, use);
  }

  /** How many targets have something remembered (for tests). */
  get size(): number {
    return this.uses.size;
  }

  private drop(key: string, use: TargetUse): void {
    if (use.inflight === 0 && use.pendingLogin === undefined) this.uses.delete(key);
  }
}
