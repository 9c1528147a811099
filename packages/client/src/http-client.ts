import http from 'node:http';
import https from 'node:https';
import { BerthError, ERROR_CODES, type BerthErrorCode } from '@berth/core';

/** Options of `HttpClient`. */
export interface HttpClientOptions {
  /** The API's base URL, e.g. http://127.0.0.1:8776. */
  url: string;
  /**
   * Other replicas of the same API (`--api http://a:8776,http://b:8776`): a request that gets no
   * answer from the replica in use goes to the next one, in turn (the whole list once), and the
   * first that answers is used from then on. Only a request safe to send twice moves on after it
   * reached a replica that then did not answer (refused, reset, or silent past its limit): a GET or
   * HEAD, or one with an `idempotencyKey`. Any other moves on only while a connection cannot even be
   * made (refused, no route, unknown name): once sent, it may have acted there.
   */
  fallbackUrls?: readonly string[];
  /** A bearer token (BERTH_TOKEN); without one every request but /healthz is refused (401). */
  token?: string;
  /**
   * Per-request deadline in ms (default 60 s), on top of any wait or extra time: the whole limit
   * of a request that cannot be sent to another replica, and the cap of every other limit.
   */
  timeoutMs?: number;
  /**
   * How long a replica may take to begin answering (the response headers) a request that could go
   * to another replica and asks for no extra time, in ms (default 15 s): past it, the replica is
   * taken for stopped (a frozen process still accepts connections) and the next one is asked.
   */
  answerTimeoutMs?: number;
  /**
   * How long after a long-poll's wait (`waitMs`) its answer may begin, in ms (default 4 s): the
   * server's own work around the wait (a few store queries).
   */
  longPollMarginMs?: number;
  /**
   * A `fetch` to send requests with instead of the client's own keep-alive connections (tests, or
   * a caller with its own proxy or TLS set-up).
   */
  fetch?: typeof fetch;
}

/** A request the client makes. */
export interface HttpRequest {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'DELETE';
  /** Path below the base URL, already encoded (see `pathOf`). */
  path: string;
  query?: Record<string, string | boolean | undefined>;
  body?: unknown;
  idempotencyKey?: string;
  /**
   * Safe to send twice by its nature, with no key (an agent's lease renewal, or its report, which
   * the server takes again from the same worker as the same): it may go to another replica after
   * one it reached gave no answer, as a GET may.
   */
  idempotent?: boolean;
  /**
   * This request's own limit for its answer to begin, in ms, when it may go to another replica
   * and asks for no extra time (instead of `answerTimeoutMs`): an agent's lease renewal must be
   * given up well before the lease passes.
   */
  answerTimeoutMs?: number;
  /**
   * How long the server may hold the answer before it begins (a long-poll's `?wait=`, a start's
   * `Prefer: wait`): the answer is due `longPollMarginMs` after it.
   */
  waitMs?: number;
  /**
   * Extra time the work behind this request may take before it answers (a reconcile): set, even to
   * 0, the request is bounded by `timeoutMs` + this only, never taken for silent sooner.
   */
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

/** How long one attempt may wait for its answer to begin (the headers), and for all of it, in ms. */
interface Limits {
  answerMs: number;
  totalMs: number;
}

/** One request as a transport sends it; resolves to the status and the body's text. */
type Send = (
  url: URL,
  method: string,
  headers: Record<string, string>,
  body: string | undefined,
  limits: Limits,
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
 * advise); nothing else is retried here.
 */
function keepAliveSend(agent: http.Agent, secure: boolean): Send {
  const once = (url: URL, method: string, headers: Record<string, string>, body: string | undefined, limits: Limits, signal?: AbortSignal) =>
    new Promise<{ status: number; text: string; reused: boolean }>((resolve, reject) => {
      let answered = false;
      let ended = false;
      const request = (secure ? https : http).request(url, { method, headers, agent, ...(signal ? { signal } : {}) }, (response) => {
        answered = true;
        clearTimeout(silent);
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('error', (error) => {
          clearTimeout(timer);
          reject(error);
        });
        response.on('end', () => {
          ended = true;
          clearTimeout(timer);
          resolve({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), reused: request.reusedSocket });
        });
      });
      // A deadline is judged once the I/O already waiting has been read (an immediate runs after
      // the poll phase): this process, itself frozen (SIGSTOP, a paused VM), wakes with its timers
      // overdue and the answer that came meanwhile in its socket — that answer is kept.
      const giveUp = (ms: number, met: () => boolean) => () =>
        setImmediate(() => {
          if (!met()) request.destroy(new DeadlineError(`no answer in ${ms} ms`));
        });
      const silent = setTimeout(giveUp(limits.answerMs, () => answered), limits.answerMs);
      const timer = setTimeout(giveUp(limits.totalMs, () => ended), limits.totalMs);
      request.on('error', (error: Error & { code?: string }) => {
        clearTimeout(silent);
        clearTimeout(timer);
        reject(Object.assign(error, { reused: request.reusedSocket }));
      });
      request.end(body);
    });
  return async (url, method, headers, body, limits, signal) => {
    try {
      return await once(url, method, headers, body, limits, signal);
    } catch (error) {
      const failed = error as { code?: string; reused?: boolean };
      if (method === 'GET' && failed.reused === true && failed.code === 'ECONNRESET') return once(url, method, headers, body, limits, signal);
      throw error;
    }
  };
}

function fetchSend(fetchFn: typeof fetch): Send {
  return async (url, method, headers, body, limits, signal) => {
    // `fetch` resolves with the headers: the answer's own limit ends there, the whole one goes on.
    // As over node's client, a deadline is judged once the I/O already waiting has been read (from
    // an immediate, after the poll phase): a client that was itself frozen keeps the answer that
    // came meanwhile.
    let answered = false;
    let ended = false;
    const stop = new AbortController();
    const giveUp = (ms: number, met: () => boolean) => () =>
      setImmediate(() => {
        if (!met()) stop.abort(new DeadlineError(`no answer in ${ms} ms`));
      });
    const silent = setTimeout(giveUp(limits.answerMs, () => answered), limits.answerMs);
    const timer = setTimeout(giveUp(limits.totalMs, () => ended), limits.totalMs);
    try {
      const response = await fetchFn(url, { method, headers, ...(body === undefined ? {} : { body }), signal: signal ? AbortSignal.any([stop.signal, signal]) : stop.signal });
      answered = true;
      clearTimeout(silent);
      const text = await response.text();
      ended = true;
      return { status: response.status, text };
    } finally {
      clearTimeout(silent);
      clearTimeout(timer);
    }
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

/**
 * Default of `HttpClientOptions.answerTimeoutMs`: above the PostgreSQL store's own 10 s bounds on
 * waiting for a connection or a lock, so a replica stuck on the database answers its own error
 * rather than being taken for silent (and its request sent to a replica waiting on the same
 * database); far below the minute a frozen replica used to cost.
 */
export const DEFAULT_ANSWER_TIMEOUT_MS = 15_000;

/**
 * Default of `HttpClientOptions.longPollMarginMs`: the server answers a long-poll when its wait
 * ends, after a few store queries. An agent whose replica froze mid-claim is on the next one after
 * wait + 4 s (+ its first backoff, under 1 s): with its host's last heartbeat at most 5 s old,
 * within the 10 s the config keeps between `agent.pollWaitMs` and `agent.offlineAfterMs`, so the
 * host does not read offline.
 */
export const DEFAULT_LONG_POLL_MARGIN_MS = 4_000;

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

/** Whether `error` is a deadline that passed (ours, or `fetch`'s `AbortSignal.timeout`). */
function timedOut(error: unknown): boolean {
  return error instanceof Error && error.name === 'TimeoutError';
}

/**
 * Whether `req` may go to another replica after one it reached gave no answer: it changes nothing
 * (GET, HEAD), it carries an `Idempotency-Key`, by which the server knows a repeat, or it is
 * marked `idempotent` (a repeat is the same by its nature).
 */
function resendable(req: HttpRequest): boolean {
  return req.method === 'GET' || req.method === 'HEAD' || req.idempotencyKey !== undefined || req.idempotent === true;
}

/** A replica that gave a request no answer, and why. */
interface Miss {
  origin: string;
  error: unknown;
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
  private readonly answerTimeoutMs: number;
  private readonly longPollMarginMs: number;

  constructor(private readonly options: HttpClientOptions) {
    // A header value cannot carry it: fetch would throw at every request, read as "cannot reach
    // the API" (an explorer's two-line token file had an agent retry for ever). Never echoed.
    if (options.token !== undefined && !/^[\x21-\x7e]*$/.test(options.token)) {
      throw new BerthError('CONFIG', 'the API token holds a space, a line break or another character a token cannot have', {
        hint: 'check BERTH_TOKEN (or the agent\'s --token-file): one line, the token alone',
      });
    }
    this.targets = [options.url, ...(options.fallbackUrls ?? [])].map((url) => targetOf(url, options.fetch));
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.answerTimeoutMs = options.answerTimeoutMs ?? DEFAULT_ANSWER_TIMEOUT_MS;
    this.longPollMarginMs = options.longPollMarginMs ?? DEFAULT_LONG_POLL_MARGIN_MS;
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
    const again = resendable(req);
    const limits = this.limitsOf(req, again);
    const missed: Miss[] = [];
    let path = req.path;
    // The replica in use first, then the others in turn while one gives no answer and the request
    // may go elsewhere (from where it started: a request beside it may move `current`).
    const start = this.current;
    for (let tried = 0; tried < this.targets.length; tried++) {
      const index = (start + tried) % this.targets.length;
      const target = this.targets[index] as Target;
      const url = urlAt(target);
      path = url.pathname;
      let response: { status: number; text: string };
      try {
        response = await target.send(url, req.method, headers, payload, limits, req.signal);
      } catch (error) {
        if (req.signal?.aborted === true) {
          throw new BerthError('CANCELLED', `${req.method} ${url.pathname} was given up`, { cause: error });
        }
        if (!again && timedOut(error)) throw unanswered(req.method, url.pathname, target.base.origin, limits.totalMs, error);
        missed.push({ origin: target.base.origin, error });
        if (!again && !neverConnected(error)) break;
        continue;
      }
      // An answer, even an error, is the replica's: it is used from now on, and nothing moves on.
      this.current = index;
      return answerOf(response);
    }
    throw noAnswer(req.method, path, missed);
  }

  /**
   * The limits of one attempt of `req`. Given up early is only a request that may then go to
   * another replica, and whose answer is due soon: at once, or when its wait ends. A write that
   * cannot be sent again gains nothing by it (there is nowhere else to send it, and a slow one
   * that worked would read as failed), nor does work that may take long (a reconcile).
   */
  private limitsOf(req: HttpRequest, again: boolean): Limits {
    const totalMs = this.timeoutMs + (req.waitMs ?? 0) + (req.extraTimeoutMs ?? 0);
    if (!again || req.extraTimeoutMs !== undefined) return { answerMs: totalMs, totalMs };
    const answerMs = req.waitMs === undefined ? (req.answerTimeoutMs ?? this.answerTimeoutMs) : req.waitMs + this.longPollMarginMs;
    return { answerMs: Math.min(answerMs, totalMs), totalMs };
  }
}

/** The answer's body parsed; a 2xx is the answer, any other status its problem thrown. */
function answerOf(response: { status: number; text: string }): HttpAnswer {
  let body: unknown;
  if (response.text !== '') {
    try {
      body = JSON.parse(response.text);
    } catch {
      body = undefined;
    }
  }
  if (response.status >= 200 && response.status < 300) return { status: response.status, body };
  throw problemToError(response.status, body);
}

/** A request that cannot be sent twice got no answer in time: whether it acted is unknown. */
function unanswered(method: string, path: string, origin: string, ms: number, cause: unknown): BerthError {
  return new BerthError('TIMEOUT', `the berth API at ${origin} did not answer ${method} ${path} in ${ms / 1000} s: it may or may not have been applied`, {
    cause,
    hint: 'it was not sent to another replica (it is not safe to send twice): check whether it took effect before trying again',
    details: { unanswered: true },
  });
}

/** No replica tried answered: TIMEOUT if one was silent past its limit, else none could be reached. */
function noAnswer(method: string, path: string, missed: readonly Miss[]): BerthError {
  const cause = missed.at(-1)?.error;
  const silent = missed.filter((miss) => timedOut(miss.error)).map((miss) => miss.origin);
  const unreachable = missed.filter((miss) => !timedOut(miss.error)).map((miss) => miss.origin);
  if (silent.length > 0) {
    const also = unreachable.length > 0 ? `, and cannot be reached at ${unreachable.join(', ')}` : '';
    return new BerthError('TIMEOUT', `the berth API at ${either(silent)} did not answer ${method} ${path} in time${also}`, {
      cause,
      hint: 'a replica that accepts connections and does not answer is stopped or overloaded: check `berth serve` there',
      details: { unanswered: true },
    });
  }
  // A write that reached a replica and lost the connection before its answer (the replica killed
  // while it ran): it may have been applied — "is berth serve running?" alone sent a user to start
  // it again over an attach that had started (explorer, 2026-12-08).
  if (method !== 'GET' && method !== 'HEAD' && missed.some((miss) => !neverConnected(miss.error))) {
    return new BerthError('CONFIG', `the berth API at ${either(unreachable)} lost the connection before it answered ${method} ${path}: it may or may not have been applied`, {
      cause,
      hint: 'check whether it took effect before trying again (`berth operation list`, `berth volume show <volume>`); is `berth serve` still running there?',
      details: { unreachable: true, outcomeUnknown: true },
    });
  }
  return new BerthError('CONFIG', `cannot reach the berth API at ${either(unreachable)}`, {
    cause,
    hint: 'is `berth serve` running there? check --api / BERTH_API_URL',
    details: { unreachable: true },
  });
}

/** `a (nor at b, c)`. */
function either(origins: readonly string[]): string {
  const [first = '', ...others] = origins;
  return others.length > 0 ? `${first} (nor at ${others.join(', ')})` : first;
}
