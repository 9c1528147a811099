// The agent protocol over real HTTP on a real PostgreSQL store: agents of hosts h-1 and h-2
// register, long-poll for work, renew and report; a second store on the same database plays the
// replica that enqueues host steps (what core's remote executor does) and notifies the host's
// channel, so a waiting claim is woken by LISTEN/NOTIFY across connections, never by a timer.
import { hostChannel, parseWorkDoneNotice, WORK_DONE_CHANNEL, type AgentSession, type ClaimedWork, type HostView, type Store, type WorkItem } from '@berth/core';
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AgentClient } from '@berth/client';
import { openPostgresStore } from '@berth/store';
import { startPostgresCluster, type PostgresCluster } from '@berth/store/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostView } from './routes/hosts.js';
import { bodyOf, CLI, createTestApi, TOKENS, type TestAnswer, type TestApi } from './test-support.js';

let cluster: PostgresCluster | undefined;
let t: TestApi | undefined;
let replica: Store | undefined;

const REGISTRATION = {
  version: '0.1.0-test',
  connector: { host: 'h-1', initiator: 'iqn.2004-10.com.example:h-1', multipath: false, platform: 'x86_64', os_type: 'linux' },
  transports: ['loop'],
  consumers: ['host'],
};

function api(): TestApi {
  if (t === undefined) throw new Error('the test API did not start');
  return t;
}

function store(): Store {
  if (replica === undefined) throw new Error('the replica store did not open');
  return replica;
}

beforeAll(async () => {
  cluster = await startPostgresCluster();
  const url = await cluster.createDatabase();
  t = await createTestApi({ storeUrl: url, agent: { pollWaitMs: 20_000, offlineAfterMs: 45_000 } });
  replica = await openPostgresStore({ url });
}, 180_000);

afterAll(async () => {
  await replica?.close();
  await t?.cleanup();
  await cluster?.stop();
}, 120_000);

async function register(token: string, instance: string, host = 'h-1'): Promise<AgentSession> {
  const answer = await api().request('POST', '/v1/agent/register', {
    token,
    json: { ...REGISTRATION, instance, connector: { ...REGISTRATION.connector, host, initiator: `iqn.2004-10.com.example:${host}` } },
  });
  expect(answer.status, answer.text).toBe(200);
  return answer.body as AgentSession;
}

function claim(token: string, worker: string, query = 'wait=0s&limit=4'): Promise<TestAnswer> {
  return api().request('GET', `/v1/agent/work?${query}`, { token, headers: { 'berth-agent-worker': worker } });
}

/** An operation of `hostId` with one pending work item of `step`, announced on the host's channel (as a replica does). */
async function enqueue(hostId: string, step: string, payload: Record<string, unknown> = {}): Promise<WorkItem> {
  return store().transaction(async (tx) => {
    const operation = await tx.operations.create({ kind: 'attach', hostId, owner: 'replica-test', deadlineAt: new Date(Date.now() + 600_000).toISOString() });
    const item = await tx.workItems!.create({ operationId: operation.id, hostId, step, payload });
    await tx.notifications!.notify(hostChannel(hostId));
    return item;
  });
}

describe('the agent protocol over HTTP on PostgreSQL', () => {
  it('only agent tokens that name a host reach the agent routes', async () => {
    for (const token of [TOKENS.admin, TOKENS.memberA]) {
      const answer = await api().request('POST', '/v1/agent/register', { token, json: { ...REGISTRATION, instance: 'x' } });
      expect(answer.status).toBe(403);
      expect((await claim(token, 'x')).status).toBe(403);
    }
    const unscoped = await api().request('POST', '/v1/agent/register', { token: TOKENS.agent, json: { ...REGISTRATION, instance: 'x' } });
    expect(unscoped.status).toBe(403);
    expect(bodyOf(unscoped).detail ?? bodyOf(unscoped).title).toEqual(expect.stringContaining('names no host'));
    expect((await api().request('POST', '/v1/agent/register', { json: { ...REGISTRATION, instance: 'x' } })).status).toBe(401);
  });

  it('registers the host and its agent: the host list shows it online with its version', async () => {
    const session = await register(TOKENS.agentH1, 'boot-1');
    expect(session).toMatchObject({ hostName: 'h-1', worker: 'h-1/boot-1', leaseMs: 15_000, pollWaitMs: 25_000 });
    const hosts = bodyOf(await api().request('GET', '/v1/hosts', { token: TOKENS.admin })).hosts as HostView[];
    const h1 = hosts.find((h) => h.name === 'h-1');
    expect(h1?.agent).toMatchObject({ instance: 'h-1/boot-1', version: '0.1.0-test', state: 'online', transports: ['loop'] });
    expect(h1?.connector).toMatchObject({ initiator: 'iqn.2004-10.com.example:h-1' });
    const one = await api().request('GET', '/v1/hosts/h-1', { token: TOKENS.admin });
    expect((one.body as HostView).agent?.state).toBe('online');
    // Not heard from for longer than offlineAfterMs: offline (the state is computed, never stored).
    const stored = await store().hosts.findByName('h-1');
    const later = Date.parse(stored!.agent!.lastSeenAt) + 45_001;
    expect(hostView(stored!, 45_000, later).agent?.state).toBe('offline');
    expect(hostView(stored!, 45_000, later - 1).agent?.state).toBe('online');
  });

  it('a waiting claim is woken by new work for its host, not by work for another host', async () => {
    const h1 = await register(TOKENS.agentH1, 'boot-2');
    const h2 = await register(TOKENS.agentH2, 'boot-1', 'h-2');
    expect(bodyOf(await claim(TOKENS.agentH1, h1.worker)).items).toEqual([]);

    const waiting = claim(TOKENS.agentH1, h1.worker, 'wait=20s&limit=4');
    // Work for h-2 first: h-1's claim must keep waiting; then h-1's own item wakes it.
    const forH2 = await enqueue(h2.hostId, 'connector', { multipath: false, enforce_multipath: false });
    const forH1 = await enqueue(h1.hostId, 'connector', { multipath: true, enforce_multipath: false });
    // Woken, it answers nothing and claims nothing (its answer could sit unread in a frozen agent):
    // the claim the agent sends at once takes the item.
    const answer = await waiting;
    expect(answer.status, answer.text).toBe(200);
    expect(bodyOf(answer).items).toEqual([]);
    expect((await store().workItems!.require(forH1.id)).state).toBe('pending');
    const next = await claim(TOKENS.agentH1, h1.worker, 'wait=20s&limit=4');
    const items = bodyOf(next).items as ClaimedWork[];
    expect(items.map((w) => w.item.id)).toEqual([forH1.id]);
    expect(items[0]?.item).toMatchObject({ state: 'claimed', leaseOwner: h1.worker, attempts: 1, step: 'connector' });
    expect(items[0]?.payload).toEqual({ multipath: true, enforce_multipath: false });
    expect(next.headers.get('cache-control')).toBe('no-store');

    // h-2's item is h-2's alone: h-1's token gets 404 for it, exactly as for a missing one.
    const foreign = await api().request('POST', `/v1/agent/work/${forH2.id}/renew`, { token: TOKENS.agentH1, headers: { 'berth-agent-worker': h1.worker } });
    expect(foreign.status).toBe(404);
    const foreignResult = await api().request('POST', `/v1/agent/work/${forH2.id}/result`, {
      token: TOKENS.agentH1,
      headers: { 'berth-agent-worker': h1.worker },
      json: { state: 'done', result: { connector: { host: 'h-1' } } },
    });
    expect(foreignResult.status).toBe(404);
    expect((await store().workItems!.require(forH2.id)).state).toBe('pending');
    const h2Items = bodyOf(await claim(TOKENS.agentH2, h2.worker)).items as ClaimedWork[];
    expect(h2Items.map((w) => w.item.id)).toEqual([forH2.id]);
    // Each agent finishes its own (the next tests start from a host with nothing held).
    for (const [token, session, id] of [[TOKENS.agentH1, h1, forH1.id], [TOKENS.agentH2, h2, forH2.id]] as const) {
      const done = await api().request('POST', `/v1/agent/work/${id}/result`, {
        token,
        headers: { 'berth-agent-worker': session.worker },
        json: { state: 'done', result: { connector: { host: session.hostName } } },
      });
      expect(done.status, done.text).toBe(200);
    }
  });

  it('renew extends the lease; a result is recorded once, announced on work_done, and checked against the step', async () => {
    const h1 = await register(TOKENS.agentH1, 'boot-3');
    const item = await enqueue(h1.hostId, 'connector', { multipath: false, enforce_multipath: false });
    const [claimed] = bodyOf(await claim(TOKENS.agentH1, h1.worker)).items as ClaimedWork[];
    expect(claimed?.item.id).toBe(item.id);
    const headers = { 'berth-agent-worker': h1.worker };

    const renewed = await api().request('POST', `/v1/agent/work/${item.id}/renew`, { token: TOKENS.agentH1, headers });
    expect(renewed.status, renewed.text).toBe(200);
    expect(String(bodyOf(renewed).leaseExpiresAt) >= String(claimed?.item.leaseExpiresAt)).toBe(true);

    // A result that is not the step's answers 400 and records nothing.
    const bad = await api().request('POST', `/v1/agent/work/${item.id}/result`, { token: TOKENS.agentH1, headers, json: { state: 'done', result: { device: '/dev/x' } } });
    expect(bad.status).toBe(400);
    expect((await store().workItems!.require(item.id)).state).toBe('claimed');

    let heard: () => void = () => undefined;
    const announced = new Promise<void>((resolve) => {
      heard = resolve;
    });
    let notice: WorkItem | undefined;
    const stop = await store().notifications!.listen(WORK_DONE_CHANNEL, (payload) => {
      const parsed = parseWorkDoneNotice(payload);
      if (parsed.id !== item.id) return;
      notice = parsed.item;
      heard();
    });
    try {
      const connector = { host: 'h-1', initiator: 'iqn.2004-10.com.example:h-1', multipath: false, auth_password: 'never-stored' };
      const result = await api().request('POST', `/v1/agent/work/${item.id}/result`, { token: TOKENS.agentH1, headers, json: { state: 'done', result: { connector } } });
      expect(result.status, result.text).toBe(200);
      await announced;
    } finally {
      await stop();
    }
    const stored = await store().workItems!.require(item.id);
    expect(stored).toMatchObject({ state: 'done', leaseExpiresAt: null });
    expect(JSON.stringify(stored.result)).not.toContain('never-stored');
    // The notification carried the finished item as stored (the replica waiting for it reads nothing).
    expect(notice).toEqual(stored);
    const twice = await api().request('POST', `/v1/agent/work/${item.id}/result`, { token: TOKENS.agentH1, headers, json: { state: 'failed', error: { code: 'DRIVER_ERROR', message: 'x' } } });
    expect(twice.status).toBe(409);
  });

  it("an agent's renew and report a frozen replica took go on to the live one at once, and the report landing twice is the same report (200, nothing written again)", async () => {
    // A frozen replica as the agent sees it: connections accepted (the kernel does), never answered.
    const sockets: net.Socket[] = [];
    const frozen = net.createServer((socket) => sockets.push(socket));
    await new Promise<void>((resolve) => frozen.listen(0, '127.0.0.1', resolve));
    const frozenUrl = `http://127.0.0.1:${(frozen.address() as net.AddressInfo).port}`;
    const client = new AgentClient({ url: frozenUrl, fallbackUrls: [api().url], token: TOKENS.agentH1, answerTimeoutMs: 1_000 });
    try {
      const h1 = await register(TOKENS.agentH1, 'boot-frozen');
      const item = await enqueue(h1.hostId, 'connector', { multipath: false, enforce_multipath: false });
      const [claimed] = bodyOf(await claim(TOKENS.agentH1, h1.worker)).items as ClaimedWork[];
      expect(claimed?.item.id).toBe(item.id);
      // The renewal, given a quarter of the lease (as the agent gives it), is on the live replica
      // well before the lease passes.
      const started = Date.now();
      const renewed = await client.renew(h1.worker, item.id, { limitMs: Math.floor(h1.leaseMs / 4) });
      expect(Date.now() - started).toBeLessThan(h1.leaseMs / 3);
      expect(renewed.leaseExpiresAt >= String(claimed?.item.leaseExpiresAt)).toBe(true);
      expect(sockets.length).toBe(1);
      // The report: a new client starts on the frozen replica again.
      client.close();
      const reporter = new AgentClient({ url: frozenUrl, fallbackUrls: [api().url], token: TOKENS.agentH1, answerTimeoutMs: 1_000 });
      try {
        const outcome = { state: 'done' as const, result: { connector: { host: 'h-1', initiator: 'iqn.2004-10.com.example:h-1', multipath: false } } };
        await reporter.report(h1.worker, item.id, outcome);
        const stored = await store().workItems!.require(item.id);
        expect(stored.state).toBe('done');
        // Had the frozen replica recorded it before it froze, the live one's copy is the same report.
        await reporter.report(h1.worker, item.id, outcome);
        expect(await store().workItems!.require(item.id)).toEqual(stored);
      } finally {
        reporter.close();
      }
    } finally {
      client.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => frozen.close(resolve));
    }
  });

  it('a new registration fences the old instance off and hands its items back to the new one', async () => {
    const old = await register(TOKENS.agentH1, 'boot-4');
    const item = await enqueue(old.hostId, 'host_facts');
    const [held] = bodyOf(await claim(TOKENS.agentH1, old.worker)).items as ClaimedWork[];
    expect(held?.item.id).toBe(item.id);

    const fresh = await register(TOKENS.agentH1, 'boot-5');
    expect(fresh.worker).not.toBe(old.worker);
    const oldHeaders = { 'berth-agent-worker': old.worker };
    expect((await claim(TOKENS.agentH1, old.worker)).status).toBe(409);
    expect((await api().request('POST', `/v1/agent/work/${item.id}/renew`, { token: TOKENS.agentH1, headers: oldHeaders })).status).toBe(409);
    const late = await api().request('POST', `/v1/agent/work/${item.id}/result`, { token: TOKENS.agentH1, headers: oldHeaders, json: { state: 'done', result: { listings: [] } } });
    expect(late.status).toBe(409);

    const [again] = bodyOf(await claim(TOKENS.agentH1, fresh.worker)).items as ClaimedWork[];
    expect(again?.item).toMatchObject({ id: item.id, attempts: 2, leaseOwner: fresh.worker });
    const report = await api().request('POST', `/v1/agent/work/${item.id}/result`, {
      token: TOKENS.agentH1,
      headers: { 'berth-agent-worker': fresh.worker },
      json: { state: 'done', result: { listings: [] } },
    });
    expect(report.status, report.text).toBe(200);
  });

  it("a replaced worker's waiting claim is answered at once by the new registration, takes nothing, and its next claim is 409; work made after it goes to the new worker", async () => {
    const old = await register(TOKENS.agentH1, 'boot-6');
    const started = Date.now();
    const waiting = claim(TOKENS.agentH1, old.worker, 'wait=20s&limit=4');
    await new Promise((resolve) => setTimeout(resolve, 200));
    const fresh = await register(TOKENS.agentH1, 'boot-7');
    const item = await enqueue(fresh.hostId, 'host_facts');
    const answer = await waiting;
    expect(answer.status, answer.text).toBe(200);
    expect(bodyOf(answer).items).toEqual([]);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect((await claim(TOKENS.agentH1, old.worker)).status).toBe(409);
    const [mine] = bodyOf(await claim(TOKENS.agentH1, fresh.worker)).items as ClaimedWork[];
    expect(mine?.item).toMatchObject({ id: item.id, attempts: 1, leaseOwner: fresh.worker });
  });

  it('a host removed after its agent registered (what `berth host forget` ends with) answers 404 unknown-host, not "register first"', async () => {
    const session = await register(TOKENS.agentOutside, 'boot-1', 'outside-1');
    expect((await claim(TOKENS.agentOutside, session.worker)).status).toBe(200);
    // Forget itself refuses a host whose agent is online: its last write, the store's host delete, stands for it.
    await store().hosts.delete(session.hostId);
    const gone = await claim(TOKENS.agentOutside, session.worker);
    expect(gone.status).toBe(404);
    const problem = bodyOf(gone);
    expect(problem.code).toBe('NOT_FOUND');
    expect(problem.detail).toBe("host outside-1 is not known to the API: no agent registered for it, or it was forgotten (berth host forget removes a host with its agent's registration)");
    expect(problem.details).toMatchObject({ kind: 'host', host: 'outside-1', reason: 'unknown-host' });
    expect(String(problem.hint)).not.toMatch(/^register first/);
  });

  it('a claim without the worker header is a 400; a claim ends at once when its wait is 0', async () => {
    const answer = await api().request('GET', '/v1/agent/work?wait=0s', { token: TOKENS.agentH1 });
    expect(answer.status).toBe(400);
    expect(answer.text).toContain('Berth-Agent-Worker');
  });

  it('`berth agent` refuses a token file its group can read, and a token a header cannot carry, with CONFIG (exit 18), the token never printed', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'berth-agent-token-'));
    try {
      const env: NodeJS.ProcessEnv = { ...process.env, BERTH_DATA_DIR: path.join(dir, 'data') };
      for (const key of ['BERTH_LOG_LEVEL', 'BERTH_CONFIG', 'BERTH_FAULTS', 'BERTH_API_URL', 'BERTH_STORE_URL']) delete env[key];
      const cases: Array<[string, number, RegExp]> = [
        [TOKENS.agentH1, 0o640, /readable by its group/],
        [`${TOKENS.agentH1}\nsecond-line`, 0o600, /a space, a line break or another character a token cannot have/],
      ];
      for (const [token, mode, said] of cases) {
        const tokenFile = path.join(dir, 'agent.token');
        rmSync(tokenFile, { force: true });
        writeFileSync(tokenFile, token, { mode });
        const run = spawnSync(process.execPath, [CLI, 'agent', '--api', api().url, '--token-file', tokenFile], { env, encoding: 'utf8', timeout: 60_000 });
        expect(run.status, run.stderr).toBe(18);
        expect(run.stderr).toMatch(said);
        expect(run.stderr + run.stdout).not.toContain(TOKENS.agentH1);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a real `berth agent` replaced by a new registration of its host exits 4 (CONFLICT) within seconds, leaving no child process', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'berth-agent-replaced-'));
    const tokenFile = path.join(dir, 'agent.token');
    writeFileSync(tokenFile, TOKENS.agentH1, { mode: 0o600 });
    const env: NodeJS.ProcessEnv = { ...process.env, BERTH_DATA_DIR: path.join(dir, 'data') };
    for (const key of ['BERTH_LOG_LEVEL', 'BERTH_CONFIG', 'BERTH_FAULTS', 'BERTH_API_URL', 'BERTH_STORE_URL']) delete env[key];
    const before = (await store().hosts.findByName('h-1'))?.agent?.instance;
    const child = spawn(process.execPath, [CLI, 'agent', '--api', api().url, '--token-file', tokenFile], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout.resume();
    const exited = new Promise<{ code: number | null; at: number }>((resolve) => child.on('exit', (code) => resolve({ code, at: Date.now() })));
    const children = new Set<number>();
    const childrenOf = (pid: number): number[] =>
      spawnSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' })
        .stdout.split('\n')
        .filter(Boolean)
        .map(Number);
    const alive = (pid: number): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    try {
      // Registered, and idle in its long-poll claim.
      for (let i = 0; ; i += 1) {
        const instance = (await store().hosts.findByName('h-1'))?.agent?.instance;
        if (instance !== undefined && instance !== before && stderr.includes('registered host h-1')) break;
        if (i > 600 || child.exitCode !== null) throw new Error(`the agent did not register: ${stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
      for (const pid of childrenOf(child.pid!)) children.add(pid);
      const replacedAt = Date.now();
      await register(TOKENS.agentH1, 'replacer-1');
      const watch = setInterval(() => {
        if (child.exitCode === null) for (const pid of childrenOf(child.pid!)) children.add(pid);
      }, 50);
      const ended = await Promise.race([exited, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 15_000))]);
      clearInterval(watch);
      expect(ended, `still running 15 s after it was replaced: ${stderr}`).toBeDefined();
      expect(stderr).toContain('another berth agent registered for host h-1; this one stops');
      expect(ended!.code).toBe(4);
      expect(ended!.at - replacedAt).toBeLessThan(10_000);
      // Its berth-spawner (and anything else it started) went with it.
      for (let i = 0; i < 60 && [...children].some(alive); i += 1) await new Promise((resolve) => setTimeout(resolve, 50));
      const left = [...children].filter(alive);
      const described = left.length === 0 ? '' : spawnSync('ps', ['-o', 'pid,ppid,etimes,args', '-p', left.join(',')], { encoding: 'utf8' }).stdout;
      expect(left, described).toEqual([]);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      for (const pid of children) if (alive(pid)) process.kill(pid, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
