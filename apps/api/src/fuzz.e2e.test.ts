import { readdirSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROJECT_A, PROJECT_B, TOKENS, bodyOf, createTestApi, type TestApi } from './test-support.js';

// Seeds have names no generator below can produce, so a random request can only miss them.
const SEED_VOLUME = 'seed-volume-7f3a9c2e';
const SEED_ATTACHED = 'seed-attached-5d1b8e4f';
const SEED_SERVER = 'seed-server-2c6e0a9d';
const RUNS_PER_ROUTE = Number(process.env.FUZZ_RUNS ?? 60);

let t: TestApi;

beforeAll(async () => {
  t = await createTestApi();
  const token = TOKENS.admin;
  await t.request('POST', '/v1/volumes', { token, json: { name: SEED_VOLUME, sizeBytes: 1024 * 1024 } });
  await t.request('POST', '/v1/volumes', { token, json: { name: SEED_ATTACHED, sizeBytes: 1024 * 1024 } });
  await t.request('POST', '/v1/servers', { token, json: { name: SEED_SERVER } });
  const attach = await t.request('POST', `/v1/servers/${SEED_SERVER}/volume-attachments`, { token, json: { volumeId: SEED_ATTACHED } });
  await t.request('GET', `/v1/operations/${String(bodyOf(attach).id)}?wait=30s`, { token });
});

afterAll(async () => {
  await t.cleanup();
});

/** Everything a request could change: rows in every project, and the volume files. */
async function snapshot(): Promise<string> {
  const s = t.service;
  const projects = ['default', PROJECT_A, PROJECT_B];
  return JSON.stringify({
    volumes: await Promise.all(projects.map((projectId) => s.listVolumes({ projectId }))),
    servers: await Promise.all(projects.map((projectId) => s.listServers({ projectId }))),
    attachments: await Promise.all(projects.map((projectId) => s.listAttachments({ projectId }))),
    hosts: await s.listHosts(),
    operations: await s.listOperations(),
    files: readdirSync(path.join(t.dataDir, 'volumes')).sort(),
  });
}

const SHELL_AND_PATHS = [
  '../',
  '../../etc/passwd',
  '..\\..\\windows',
  '/etc/shadow',
  '$(reboot)',
  '`id`',
  '; rm -rf /',
  '| cat /etc/passwd',
  '&& shutdown -h now',
  '%00',
  '\u0000',
  'a\nb',
  '<script>alert(1)</script>',
  "' OR 1=1 --",
  '__proto__',
  'constructor',
  'prototype',
  '{{7*7}}',
  '%s%s%s%n',
  '-rf',
  '--help',
  ' ',
  '',
  'ＡＢＣ',
  '😀',
  'x'.repeat(300),
];

/** Strings that are never a valid name (so no request can create anything). */
const hostileString = fc.oneof(
  fc.constantFrom(...SHELL_AND_PATHS),
  fc.string({ maxLength: 40 }).map((s) => `-${s}`),
  fc.string({ unit: 'grapheme', maxLength: 40 }).map((s) => `/${s}`),
  fc.string({ minLength: 64, maxLength: 400 }).map((s) => `x${s}`.padEnd(64, 'x')),
);

const hostileNumber = fc.constantFrom(-1, 0, 511, 513, 1.5, 1e308, -1e308, 2 ** 53, 2 ** 51, Number.MAX_SAFE_INTEGER + 2);

/** A value of any JSON type, hostile where it is a string or number, sometimes deep. */
const hostileValue: fc.Arbitrary<unknown> = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    hostileString,
    hostileNumber,
    fc.boolean(),
    fc.constant(null),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.oneof(hostileString, fc.constantFrom('name', 'sizeBytes', 'volumeId', 'host')), tie('value'), { maxKeys: 4 }),
  ),
})).value;

const FIELDS = ['name', 'sizeBytes', 'backend', 'multiattach', 'volumeId', 'volume', 'server', 'mode', 'multipath', 'force', 'attachmentId', 'connector', 'host', 'projectId', 'dryRun'];

/** A body as raw text: JSON of hostile objects, deep nesting, pollution keys, huge or broken text. */
const hostileBody = fc.oneof(
  fc.constant('{}'),
  fc.dictionary(fc.oneof(fc.constantFrom(...FIELDS), hostileString), hostileValue, { maxKeys: 6 }).map((o) => JSON.stringify(o)),
  fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
  fc.integer({ min: 100, max: 20_000 }).map((n) => '['.repeat(n) + ']'.repeat(n)),
  fc.integer({ min: 100, max: 5_000 }).map((n) => '{"a":'.repeat(n) + '1' + '}'.repeat(n)),
  fc.constantFrom(
    '{"__proto__": {"isAdmin": true}}',
    '{"constructor": {"prototype": {"isAdmin": true}}}',
    '{"name": "x", "__proto__": {"sizeBytes": 512}}',
    '{"connector": {"host": "h", "__proto__": {"x": 1}}}',
    '{"name": "\\u0000", "sizeBytes": 512}',
    '{"volumeId": {"$ne": null}}',
    '{',
    'null',
    '[]',
    '"just a string"',
    '1e999999',
    'x'.repeat(70 * 1024),
    JSON.stringify({ name: 'y'.repeat(60 * 1024) }),
  ),
);

const contentType = fc.constantFrom('application/json', 'text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=latin1', undefined);
const QUERY_KEYS = ['projectId', 'status', 'state', 'wait', 'force', 'volume', 'server'];
// Mostly no query, so that most requests get past it to the path and the body.
const hostileQuery = fc.oneof(
  { weight: 3, arbitrary: fc.constant<Record<string, string>>({}) },
  {
    weight: 2,
    arbitrary: fc.dictionary(
      fc.oneof(fc.constantFrom(...QUERY_KEYS), hostileString),
      fc.oneof(hostileString, fc.constantFrom('1', '30s', '99999999m', 'true', 'available', 'running')),
      { maxKeys: 3 },
    ),
  },
);
const token = fc.oneof(
  { weight: 6, arbitrary: fc.constant<string | undefined>(TOKENS.admin) },
  { weight: 1, arbitrary: fc.constantFrom<string | undefined>(TOKENS.memberA, TOKENS.agent, undefined, 'not-a-token', 'x'.repeat(5000)) },
);
const idempotencyKey = fc.option(fc.oneof(fc.string({ maxLength: 30 }), fc.constant('k'.repeat(300))), { nil: undefined });

function paramValue(name: string): fc.Arbitrary<string> {
  // Ids are sometimes well-formed (and then name nothing), refs and names always hostile.
  return name === 'id' ? fc.oneof(fc.uuid(), hostileString) : hostileString;
}

function queryString(query: Record<string, string>): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) params.append(key, value);
  const text = params.toString();
  return text === '' ? '' : `?${text}`;
}

describe('every route under random and hostile input', () => {
  it('never answers 5xx, never crashes, and changes nothing', async () => {
    const before = await snapshot();
    const seen = new Map<string, number>();
    for (const route of t.app.routes) {
      const names = [...route.path.matchAll(/\{([A-Za-z0-9_]+)\}/g)].map((m) => m[1] ?? '');
      const params = fc.tuple(...names.map(paramValue));
      await fc.assert(
        fc.asyncProperty(params, hostileQuery, hostileBody, contentType, token, idempotencyKey, async (values, query, body, type, auth, key) => {
          let urlPath = route.path;
          names.forEach((name, i) => {
            urlPath = urlPath.replace(`{${name}}`, encodeURIComponent(values[i] ?? ''));
          });
          const headers: Record<string, string> = {};
          if (key !== undefined && /^[\x20-\x7e]*$/.test(key)) headers['idempotency-key'] = key;
          const answer = await t.request(route.method, `${urlPath}${queryString(query)}`, {
            token: auth,
            headers,
            ...(route.method === 'GET' ? {} : { raw: body }),
            ...(type === undefined ? {} : { contentType: type }),
          });
          seen.set(`${route.method} ${route.path} ${answer.status}`, (seen.get(`${route.method} ${route.path} ${answer.status}`) ?? 0) + 1);
          expect(answer.status, `${route.method} ${urlPath}: ${answer.text.slice(0, 300)}`).toBeLessThan(500);
          if (answer.status >= 400) {
            expect(answer.headers.get('content-type')).toBe('application/problem+json; charset=utf-8');
            expect(bodyOf(answer)).toMatchObject({ status: answer.status, code: expect.any(String), requestId: expect.any(String) });
          }
        }),
        { numRuns: RUNS_PER_ROUTE, interruptAfterTimeLimit: 20_000 },
      );
    }
    if (process.env.FUZZ_DEBUG) console.log([...seen.entries()].map(([k, v]) => `${k}: ${v}`).join("\n"));
    expect((await t.request('GET', '/healthz')).status).toBe(200);
    expect(await snapshot()).toBe(before);
    // Every route was reached (not all stopped at the door with 401).
    const reached = new Set([...seen.keys()].filter((k) => !k.endsWith(' 401')).map((k) => k.split(' ').slice(0, 2).join(' ')));
    expect(reached.size).toBe(t.app.routes.length);
    expect(({} as Record<string, unknown>).isAdmin).toBeUndefined();
  });
});
