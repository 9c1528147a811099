import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Operation } from '@berth/core';

const OPERATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const STEP_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const HTTP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** Options of `ApiMetrics`. */
export interface ApiMetricsOptions {
  /** Also export prom-client's process metrics (CPU, memory, event loop); default true. */
  defaultMetrics?: boolean;
}

/**
 * The app's Prometheus metrics, in a registry of its own (so two apps in one process, as in tests,
 * never share or double-register a metric).
 */
export class ApiMetrics {
  /** The registry `/metrics` renders. */
  readonly registry = new Registry();
  /** Whole attach/detach durations by kind, transport and final state. */
  readonly operationDuration: Histogram<'kind' | 'transport' | 'result'>;
  /** Each journalled step's duration, by kind, step, phase (do/undo) and transport. */
  readonly stepDuration: Histogram<'kind' | 'step' | 'phase' | 'transport'>;
  /** Finished operations by kind, final state and error code (`none` on success). */
  readonly operations: Counter<'kind' | 'result' | 'code'>;
  /** Operations this app started that have not finished. */
  readonly inFlight: Gauge<'kind'>;
  /** HTTP request durations by method, route pattern and status. */
  readonly httpDuration: Histogram<'method' | 'route' | 'status'>;
  /** Long-polls (`?wait=`) waiting for an operation to end. */
  readonly longPolls: Gauge;

  constructor(options: ApiMetricsOptions = {}) {
    const registers = [this.registry];
    this.operationDuration = new Histogram({
      name: 'berth_operation_duration_seconds',
      help: 'Duration of finished attach/detach operations, from start to end',
      labelNames: ['kind', 'transport', 'result'],
      buckets: OPERATION_BUCKETS,
      registers,
    });
    this.stepDuration = new Histogram({
      name: 'berth_operation_step_duration_seconds',
      help: 'Duration of each journalled step of finished operations',
      labelNames: ['kind', 'step', 'phase', 'transport'],
      buckets: STEP_BUCKETS,
      registers,
    });
    this.operations = new Counter({
      name: 'berth_operations_total',
      help: 'Finished operations by kind, result and error code',
      labelNames: ['kind', 'result', 'code'],
      registers,
    });
    this.inFlight = new Gauge({
      name: 'berth_operations_in_flight',
      help: 'Operations started by this API that have not finished',
      labelNames: ['kind'],
      registers,
    });
    this.httpDuration = new Histogram({
      name: 'berth_http_request_duration_seconds',
      help: 'HTTP request durations by method, route pattern and status',
      labelNames: ['method', 'route', 'status'],
      buckets: HTTP_BUCKETS,
      registers,
    });
    this.longPolls = new Gauge({
      name: 'berth_http_long_polls_waiting',
      help: 'Long-polls (?wait=) waiting for an operation to end',
      registers,
    });
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'berth_api_' });
  }

  /** Record a finished operation from its journal: its duration, each step's, and its outcome. */
  recordOperation(operation: Operation, transport: string): void {
    const started = Date.parse(operation.startedAt);
    const ended = operation.endedAt === null ? Number.NaN : Date.parse(operation.endedAt);
    if (Number.isFinite(started) && Number.isFinite(ended) && ended >= started) {
      this.operationDuration.observe({ kind: operation.kind, transport, result: operation.state }, (ended - started) / 1000);
    }
    for (const step of operation.steps) {
      if (step.durationMs === null || !Number.isFinite(step.durationMs)) continue;
      this.stepDuration.observe({ kind: operation.kind, step: step.name, phase: step.phase, transport }, step.durationMs / 1000);
    }
    this.operations.inc({ kind: operation.kind, result: operation.state, code: operation.error?.code ?? 'none' });
  }

  /** The text `/metrics` serves. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
