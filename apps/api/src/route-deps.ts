import type { BerthService } from '@berth/core';
import type { OperationKeyLog } from './idempotency.js';
import type { ApiMetrics } from './metrics.js';
import type { OpenApiDocument } from './openapi.js';
import type { OperationTracker } from './operation-tracker.js';

/** The agent protocol's timings: a claim's longest wait, and when an agent counts as offline. */
export interface AgentTimings {
  pollWaitMs: number;
  offlineAfterMs: number;
}

/** What the route modules share. */
export interface RouteDeps {
  service: BerthService;
  tracker: OperationTracker;
  metrics: ApiMetrics;
  /** The project of requests that name none (the config's `defaultProject`). */
  defaultProject: string;
  /** Upper bound of `?wait=` (long-polls end by then, with the operation as it is). */
  maxWaitMs: number;
  /** Aborted when the app starts shutting down: long-polls return at once. */
  shutdown: AbortSignal;
  /** What each attach/detach Idempotency-Key was used for. */
  operationKeys: OperationKeyLog;
  /** The agent protocol's timings (the config's `agent` section). */
  agent: AgentTimings;
  /** The names of the accepted agent tokens that act for `host` (what a forgotten host leaves behind). */
  agentTokenNames(host: string): string[];
  /** The app's OpenAPI document (built after the routes are). */
  openapi(): OpenApiDocument;
}
