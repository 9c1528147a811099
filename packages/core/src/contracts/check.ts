/** What `check()` reports: whether a driver/backend/consumer works on this host, and why not. */
export interface CheckResult {
  /** True when it can be used here now. */
  ok: boolean;
  /** One line: what works, or what is missing. */
  summary: string;
  /** Individual findings (`losetup present`, `running as root`, ...). */
  checks?: Array<{ name: string; ok: boolean; detail?: string }>;
  /** What to install or change when `ok` is false. */
  fix?: string;
}
