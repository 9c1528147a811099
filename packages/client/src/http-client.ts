import http from 'node:http';
import https from 'node:https';
import { BerthError, ERROR_CODES, type BerthErrorCode } from '@berth/core';

/** Options of `HttpClient`. */
export interface HttpClientOptions {
  /** The API's base URL, e.g. http://127.0.0.1:8776. */
  url: string;
  /**
   * Other replicas of the same API (`--api http://a:8776,http://b:8776`): a request whose
   * connection to the replica in use cannot even be made (refused, no route, unknown name) goes to
   * the next one, in order, and the first that answers is used from then on. A request that
   * reached a replica is never sent to another (it may have acted there).
   */
  fallbackUrls?: readonly string[];
  /** A bearer token (BERTH_TOKEN); without one every request but /healthz is refused (401). */
  token?: string;
  /** Per-request deadline in ms, on top of any `?wait=` (default 60 s). */
  timeoutMs?: number;
  /**
   * A `fetch` to send requests with instead of the client's own keep-alive connections (tests, or
   * a caller with its own proxy or TLS set-up).
   */
  fetch?: typeof fetch;
}

/** A request the client makes. */
export interface HttpRequest {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** Path below the base URL, already encoded (see `pathOf`). */
  path: string;
  query?: Record<string, string | boolean | undefined>;
  body?: unknown;
  idempotencyKey?: string;
  /** Extra time this request may take (a long-poll's wait). */
  extraTimeoutMs?: number;
  /** Headers beyond the ones the client sets (e.g. `Berth-Agent-Worker`). */
  headers?: Record<string, string>;
  /** Gives up on the request (a long-poll the caller no longer needs): it fails with CANCELLED. */
  signal?: AbortSignal;
}

/** An answer: its status and its parsed JSON body (undefined when empty). */
export interface HttpAnswer {
  status: number;
  body: unknown;
}

/** One request as a transport sends it; resolves to the status and the body's text. */
type Send = (
  url: URL,
  method: string,
  headers: Record<string, string>,
  body: string | undefined,
  timeoutMs: number,
  signal?: AbortSignal,
) => Promise<{ status: number; text: string }>;

/** A deadline that passed (told apart from a connection that failed). */
class DeadlineError extends Error {
  override readonly name = 'TimeoutError';
}

/**
 * Requests over node's own HTTP client on keep-alive connections: one connection serves a whole
 * command (a start and its long-polls) or a long-running caller, instead of one per request. It
 * costs less per request than `fetch` and loads nothing more. A GET that fails because the server
 * closed an idle kept-alive connection just as it was reused is sent once more (what node's docs
 * advise); nothing else is retried.
 */
function keepAliveSend(agent: http.Agent, secure: boolean): Send {
  const once = (url: URL, method: string, headers: Record<string, string>, body: string | undefined, timeoutMs: number, signal?: AbortSignal) =>
    new Promise<{ status: number; text: string; reused: boolean }>((resolve, reject) => {
      const request = (secure ? https : http).request(url, { method, headers, agent, ...(signal ? { signal } : {}) }, (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('error', reject);
        response.on('end', () => {
          clearTimeout(timer);
          resolve({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), reused: request.reusedSocket });
        });
      });
      const timer = setTimeout(() => request.destroy(new DeadlineError(`no answer in ${timeoutMs} ms`)), timeoutMs);
      request.on('error', (error: Error & { code?: string }) => {
        clearTimeout(timer);
        reject(Object.assign(error, { reused: request.reusedSocket }));
      });
      request.end(body);
    });
  return async (url, method, headers, body, timeoutMs, signal) => {
    try {
      return await once(url, method, headers, body, timeoutMs, signal);
    } catch (error) {
      const failed = error as { code?: string; reused?: boolean };
      if (method === 'GET' && failed.reused === true && failed.code === 'ECONNRESET') return once(url, method, headers, body, timeoutMs, signal);
      throw error;
    }
  };
}

function fetchSend(fetchFn: typeof fetch): Send {
  return async (url, method, headers, body, timeoutMs, signal) => {
    const deadline = AbortSignal.timeout(timeoutMs);
    const response = await fetchFn(url, { method, headers, ...(body === undefined ? {} : { body }), signal: signal ? AbortSignal.any([deadline, signal]) : deadline });
    return { status: response.status, text: await response.text() };
  };
}

const CODES = new Set<string>(ERROR_CODES);

function codeForStatus(status: number): BerthErrorCode {
  if (status === 400 || status === 413 || status === 415) return 'VALIDATION';
  if (status === 401) return 'UNAUTHENTICATED';
  if (status === 403) return 'FORBIDDEN';
  if (status === 404) return 'NOT_FOUND';
  if (status === 409) return 'CONFLICT';
  if (status === 422) return 'UNPROCESSABLE';
  if (status === 504) return 'TIMEOUT';
  return 'INTERNAL';
}

/**
 * A path with every interpolated value percent-encoded as one segment: apiPath`/v1/volumes/${ref}`.
 * URLs treat `.` and `..` (even percent-encoded) as steps, so such a ref cannot be sent; it names
 * nothing (names start with a letter or digit), hence NOT_FOUND as the service would answer.
 */
export function apiPath(strings: TemplateStringsArray, ...values: string[]): string {
  let out = strings[0] ?? '';
  values.forEach((value, i) => {
    if (value === '.' || value === '..') throw new BerthError('NOT_FOUND', `nothing is named ${JSON.stringify(value)}`);
    out += encodeURIComponent(value) + (strings[i + 1] ?? '');
  });
  return out;
}

/**
 * The BerthError an error answer stands for: the problem's `code`, `detail` and `hint` (so the CLI
 * prints and exits as in embedded mode); a body that is not a problem is named by its status.
 */
export function problemToError(status: number, body: unknown): BerthError {
  const problem = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
  const code = typeof problem.code === 'string' && CODES.has(problem.code) ? (problem.code as BerthErrorCode) : codeForStatus(status);
  const detail = typeof problem.detail === 'string' ? problem.detail : `the berth API answered ${status}`;
  const details: Record<string, unknown> = {};
  if (typeof problem.operationId === 'string') details.operationId = problem.operationId;
  if (typeof problem.requestId === 'string') details.requestId = problem.requestId;
  if (Array.isArray(problem.issues)) details.issues = problem.issues;
  if (typeof problem.details === 'object' && problem.details !== null) Object.assign(details, problem.details);
  return new BerthError(code, detail, {
    ...(typeof problem.hint === 'string' ? { hint: problem.hint } : {}),
    details,
  });
}

/** One replica the client can send to. */
interface Target {
  base: URL;
  send: Send;
  agent: http.Agent | undefined;
}

/** Error codes of a connection that could not be made: the request never reached the server. */
const NOT_CONNECTED = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL']);

/** Whether `error` (or one of its causes, as `fetch` wraps them) says the connection was never made. */
function neverConnected(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && NOT_CONNECTED.has(code)) return true;
  }
  return false;
}

function targetOf(url: string, fetchImpl: typeof fetch | undefined): Target {
  let base: URL;
  try {
    base = new URL(url);
  } catch (error) {
    throw new BerthError('CONFIG', `the berth API URL ${JSON.stringify(url)} is not a URL`, {
      cause: error,
      hint: 'set --api or BERTH_API_URL to something like http://127.0.0.1:8776 (several replicas: separated by commas)',
    });
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') {
    throw new BerthError('CONFIG', `the berth API URL must be http or https, not ${base.protocol}`);
  }
  // The client adds `/v1/…` itself: a URL ending in it would ask for `/v1/v1/…` ("no route").
  if (/\/v1\/?$/.test(base.pathname)) {
    throw new BerthError('CONFIG', `the berth API URL ${JSON.stringify(url)} ends in /v1: give the server's address without it`, {
      hint: `e.g. ${base.origin}${base.pathname.replace(/\/v1\/?$/, '') || ''} (berth adds /v1 to every request)`,
    });
  }
  if (fetchImpl !== undefined) return { base, send: fetchSend(fetchImpl), agent: undefined };
  const secure = base.protocol === 'https:';
  const agent = secure ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
  return { base, send: keepAliveSend(agent, secure), agent };
}

/** JSON over HTTP to the berth API, every failure a BerthError. */
export class HttpClient {
  private readonly targets: Target[];
  /** The index of the replica in use (the last one that answered). */
  private current = 0;
  private readonly timeoutMs: number;

  constructor(private readonly options: HttpClientOptions) {
    this.targets = [options.url, ...(options.fallbackUrls ?? [])].map((url) => targetOf(url, options.fetch));
    this.timeoutMs = options.timeoutMs ?? 60_000;
  }

  /** Close the kept-alive connections (idle ones never keep a process alive, but a caller may be done). */
  close(): void {
    for (const target of this.targets) target.agent?.destroy();
  }

  /** The base URL of the replica in use. */
  get url(): string {
    return (this.targets[this.current] as Target).base.toString();
  }

  /** Send a request; resolves to any 2xx answer, throws the problem of any other as a BerthError. */
  async request(req: HttpRequest): Promise<HttpAnswer> {
    const urlAt = (target: Target): URL => {
      const base = target.base.href.endsWith('/') ? target.base.href : `${target.base.href}/`;
      const url = new URL(req.path.replace(/^\//, ''), base);
      for (const [key, value] of Object.entries(req.query ?? {})) {
        if (value !== undefined) url.searchParams.set(key, String(value));
      }
      return url;
    };
    const headers: Record<string, string> = { ...req.headers, accept: 'application/json, application/problem+json' };
    if (this.options.token !== undefined && this.options.token !== '') headers.authorization = `Bearer ${this.options.token}`;
    if (req.body !== undefined) headers['content-type'] = 'application/json';
    if (req.idempotencyKey !== undefined) headers['idempotency-key'] = req.idempotencyKey;
    const payload = req.body === undefined ? undefined : JSON.stringify(req.body);
    if (payload !== undefined) headers['content-length'] = String(Buffer.byteLength(payload));
    let response: { status: number; text: string } | undefined;
    // The replica in use first, then the others in turn while a connection cannot even be made.
    for (let tried = 0; response === undefined; tried++) {
      const index = (this.current + tried) % this.targets.length;
      const target = this.targets[index] as Target;
      const url = urlAt(target);
      try {
        response = await target.send(url, req.method, headers, payload, this.timeoutMs + (req.extraTimeoutMs ?? 0), req.signal);
        this.current = index;
      } catch (error) {
        if (req.signal?.aborted === true) {
          throw new BerthError('CANCELLED', `${req.method} ${url.pathname} was given up`, { cause: error });
        }
        if (error instanceof Error && error.name === 'TimeoutError') {
          throw new BerthError('TIMEOUT', `the berth API at ${target.base.origin} did not answer ${req.method} ${url.pathname} in time`, { cause: error });
        }
        if (tried + 1 < this.targets.length && neverConnected(error)) continue;
        const all = this.targets.length > 1 && neverConnected(error) ? ` (nor at ${this.targets.filter((t) => t !== target).map((t) => t.base.origin).join(', ')})` : '';
        throw new BerthError('CONFIG', `cannot reach the berth API at ${target.base.origin}${all}`, {
          cause: error,
          hint: 'is `berth serve` running there? check --api / BERTH_API_URL',
          details: { unreachable: true },
        });
      }
    }
    const text = response.text;
    let body: unknown;
    if (text !== '') {
      try {
        body = JSON.parse(text);
      } catch {
        body = undefined;
      }
    }
    if (response.status >= 200 && response.status < 300) return { status: response.status, body };
    throw problemToError(response.status, body);
  }
}
