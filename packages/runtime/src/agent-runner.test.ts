import { describe, expect, it, vi } from 'vitest';
import {
  BerthError,
  definePlugin,
  DriverCatalog,
  PLUGIN_API_VERSION,
  silentLogger,
  type AgentOutcome,
  type AgentRegistration,
  type AgentSession,
  type BerthConfig,
  type ClaimedWork,
  type ConnectedDevice,
  type Device,
  type PathRepair,
  type TransportDriver,
} from '@berth/core';
import type { HostServices } from '@berth/host';
import { killedWithCommand } from '@berth/host/testing';
import { AgentRunner, type AgentApi } from './agent-runner.js';
import type { AgentHost } from './open-agent.js';

// The agent's loop against a scripted API and a transport whose connect waits until the test lets
// it go: what it registers, per-volume order, fencing (409), a lost API, and a graceful stop.

function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

class FakeTransport implements TransportDriver {
  readonly name = 'fake';
  readonly protocols = ['file'];
  readonly priority = 0;
  readonly calls: string[] = [];
  gate: Promise<void> = Promise.resolve();
  accepts(): boolean {
    return true;
  }
  async connectorProperties(): Promise<Record<string, unknown>> {
    return { fake_initiator: 'fake-1' };
  }
  async connect(_connection: unknown, options: { volumeId: string; signal: AbortSignal }): Promise<Device> {
    this.calls.push(`connect ${options.volumeId}`);
    await Promise.race([
      this.gate,
      new Promise((_, reject) => options.signal.addEventListener('abort', () => reject(new BerthError('TIMEOUT', 'aborted')), { once: true })),
    ]);
    this.calls.push(`connected ${options.volumeId}`);
    return { path: '/dev/fake0', type: 'block' };
  }
  async disconnect(_connection: unknown, _device: unknown, options: { volumeId?: string }): Promise<void> {
    this.calls.push(`disconnect ${options.volumeId ?? '?'}`);
  }
  async check() {
    return { ok: true, summary: 'fake' };
  }
}

/** A transport with an upkeep (iscsi-user's starts its watcher again): counts its rounds, fails the first. */
class UpkeepTransport extends FakeTransport {
  rounds = 0;
  async upkeep(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    this.rounds += 1;
    if (this.rounds === 1) throw new BerthError('DRIVER_ERROR', 'the watcher would not start');
  }
}

/** A transport with two portals per device whose path check the agent runs: the first one fails. */
class PathTransport extends FakeTransport {
  readonly repaired = deferred<string>();
  portal = '127.0.0.1:3260';
  async connected(): Promise<ConnectedDevice[]> {
    const failed = this.portal === '127.0.0.1:3260';
    const paths = [
      { portal: this.portal, state: failed ? 'failed' : 'active' },
      { portal: failed ? '127.0.0.2:3260' : '127.0.0.1:3260', state: 'standby' },
    ];
    return [{ device: { path: '/dev/fake0', type: 'block', paths }, source: { path: '/tmp/v' } }];
  }
  async repairPaths(listed: ConnectedDevice): Promise<PathRepair> {
    this.calls.push(`repair ${listed.device.path}`);
    if (this.portal === '127.0.0.2:3260') return { changed: false, detail: 'its portal answers' };
    this.portal = '127.0.0.2:3260';
    this.repaired.resolve(this.portal);
    return { changed: true, detail: 'moved /dev/fake0 from 127.0.0.1:3260 to 127.0.0.2:3260' };
  }
}

function hostWith(transport: FakeTransport): AgentHost {
  const catalog = new DriverCatalog({ fs: { resolve: (p: string) => p, toHostPath: (p: string) => p, realpath: async (p: string) => p, stat: async () => ({ isFile: false, isDirectory: false, isSymbolicLink: false, isBlockDevice: true, size: 0 }) } } as unknown as HostServices, '/tmp', silentLogger);
  catalog.add({
    plugin: definePlugin({ name: 'fakes', apiVersion: PLUGIN_API_VERSION, register: (r) => r.transport('fake', () => transport) }),
    packageName: 'fakes',
    version: undefined,
    options: undefined,
  });
  const config = { connector: { multipath: false, enforce_multipath: false }, upkeep: { intervalMs: 0 } } as unknown as BerthConfig;
  const identity = { hostname: 'h1', ips: ['10.0.0.1'], platform: 'x86_64', osType: 'linux' };
  return {
    config,
    catalog,
    logger: silentLogger,
    identity,
    baseConnector: () => ({ host: 'h1', ip: '10.0.0.1', platform: 'x86_64', os_type: 'linux', multipath: false, enforce_multipath: false }),
    close: async () => undefined,
  };
}

const SESSION: AgentSession = { hostId: 'host-1', hostName: 'h1', worker: 'w-1', leaseMs: 300, pollWaitMs: 1000 };
const FILE_CONNECTION = { driver_volume_type: 'file', data: { path: '/tmp/v' } };
const FUTURE = new Date(Date.now() + 60_000).toISOString();

let nextId = 0;
function work(step: string, payload: Record<string, unknown>): ClaimedWork {
  nextId++;
  const now = new Date().toISOString();
  return {
    // Claimed by this agent's worker, its lease running: what a claim answer holds.
    item: {
      ...{ id: `00000000-0000-4000-8000-${String(nextId).padStart(12, '0')}`, operationId: '00000000-0000-4000-8000-000000000000' },
      ...{ hostId: '00000000-0000-4000-8000-00000000000f', step, state: 'claimed', payload: {}, result: null, error: null },
      ...{ attempts: 1, leaseOwner: 'w-1', leaseExpiresAt: new Date(Date.now() + 300).toISOString(), createdAt: now, updatedAt: now },
    },
    payload,
  };
}

const connect = (volumeId: string) => work('connect', { transport: 'fake', connection: FILE_CONNECTION, volumeId, deadlineAt: FUTURE });
const release = (volumeId: string) =>
  work('release', { transport: 'fake', connection: FILE_CONNECTION, volumeId, force: false, inUse: [], deadlineAt: FUTURE });

/** An API that hands out the given batches one per claim, then long-polls until the claim's signal. */
class ScriptedApi implements AgentApi {
  readonly registrations: AgentRegistration[] = [];
  readonly reports: Array<{ id: string; outcome: AgentOutcome }> = [];
  readonly renewals: string[] = [];
  registerFailures: BerthError[] = [];
  renewAnswer: (() => Promise<{ leaseExpiresAt: string }>) | undefined;
  reportAnswer: (() => Promise<void>) | undefined;
  readonly reported = deferred();
  expectedReports = 1;
  claims = 0;

  constructor(private readonly batches: ClaimedWork[][]) {}

  async register(registration: AgentRegistration): Promise<AgentSession> {
    const failure = this.registerFailures.shift();
    if (failure !== undefined) throw failure;
    this.registrations.push(registration);
    return SESSION;
  }

  async claim(_worker: string, options: { signal?: AbortSignal }): Promise<ClaimedWork[]> {
    this.claims++;
    const batch = this.batches.shift();
    if (batch !== undefined) return batch;
    await new Promise<void>((resolve) => options.signal?.addEventListener('abort', () => resolve(), { once: true }));
    throw new BerthError('CANCELLED', 'given up');
  }

  readonly renewLimits: Array<number | undefined> = [];

  async renew(_worker: string, id: string, options?: { limitMs?: number }): Promise<{ leaseExpiresAt: string }> {
    this.renewals.push(id);
    this.renewLimits.push(options?.limitMs);
    if (this.renewAnswer) return this.renewAnswer();
    return { leaseExpiresAt: new Date(Date.now() + 300).toISOString() };
  }

  async report(_worker: string, id: string, outcome: AgentOutcome): Promise<void> {
    if (this.reportAnswer) await this.reportAnswer();
    this.reports.push({ id, outcome });
    if (this.reports.length >= this.expectedReports) this.reported.resolve();
  }
}

function runner(api: AgentApi, transport: FakeTransport, states: string[] = [], pathCheckMs = 0): AgentRunner {
  return new AgentRunner({
    pathCheckMs,
    host: hostWith(transport),
    api,
    apiUrl: 'http://api.test',
    version: '0.1.0',
    onState: (line) => states.push(line),
    backoff: { firstMs: 1, maxMs: 5 },
  });
}

/** Run an agent until the API got the reports it expects, then stop it: the agent, for its instance. */
async function runUntilReported(api: ScriptedApi, transport: FakeTransport, states: string[] = []): Promise<AgentRunner> {
  const agent = runner(api, transport, states);
  const running = agent.run();
  await api.reported.promise;
  agent.stop();
  await running;
  return agent;
}

/** Run the agent until it reported its one item: a step that hangs (`transport`) aborted at its deadline, within 5 s. */
async function expectTimedOutSoon(api: ScriptedApi, transport: FakeTransport): Promise<void> {
  const started = performance.now();
  await runUntilReported(api, transport);
  expect(performance.now() - started).toBeLessThan(5_000);
  expect(api.reports[0]?.outcome).toMatchObject({ state: 'failed', error: { code: 'TIMEOUT' } });
}

describe('AgentRunner', () => {
  it('registers its connector and transports, runs a connect and reports the device', async () => {
    const transport = new FakeTransport();
    const item = connect('v1');
    const api = new ScriptedApi([[item]]);
    const states: string[] = [];
    const agent = await runUntilReported(api, transport, states);
    expect(api.registrations[0]).toMatchObject({ instance: agent.instance, version: '0.1.0', transports: ['fake'], transportInfo: [{ name: 'fake', protocols: ['file'], priority: 0 }] });
    expect(api.registrations[0]?.connector).toMatchObject({ host: 'h1', fake_initiator: 'fake-1' });
    expect(api.reports).toEqual([{ id: item.item.id, outcome: { state: 'done', result: { device: { path: '/dev/fake0', type: 'block' } } } }]);
    expect(states.find((line) => line.startsWith('registered'))).toContain('registered host h1 with the API at http://api.test as w-1');
  });

  it('takes no work while a dead berth process\'s command still runs on this host (its SIGKILLed predecessor\'s), and registers once it ended', async () => {
    const killed = await killedWithCommand({ timeoutMs: 20_000 });
    try {
      const api = new ScriptedApi([]);
      const states: string[] = [];
      const agent = runner(api, new FakeTransport(), states);
      const running = agent.run();
      await vi.waitFor(() => expect(states.join('\n')).toContain('left commands running'), { timeout: 10_000 });
      // Before: registered at once, and the dead agent's items requeued to it beside the command.
      expect(api.registrations).toHaveLength(0);
      await killed.finish();
      await vi.waitFor(() => expect(api.registrations).toHaveLength(1), { timeout: 10_000 });
      agent.stop();
      await running;
    } finally {
      await killed.dispose();
    }
  });

  it('checks its transports\' paths on a timer and moves a device off a failed path, once; a stop ends the checks', async () => {
    const transport = new PathTransport();
    const api = new ScriptedApi([]);
    const states: string[] = [];
    const agent = runner(api, transport, states, 20);
    const running = agent.run();
    expect(await transport.repaired.promise).toBe('127.0.0.2:3260');
    await expect.poll(() => states.some((s) => s === 'path check: moved /dev/fake0 from 127.0.0.1:3260 to 127.0.0.2:3260')).toBe(true);
    // Healthy now: the next checks list it and leave it alone.
    const checksBefore = transport.calls.length;
    await expect.poll(() => api.claims).toBeGreaterThan(0);
    agent.stop();
    await running;
    expect(transport.calls.slice(checksBefore).filter((c) => c.startsWith('repair'))).toEqual([]);
    expect(transport.calls.filter((c) => c.startsWith('repair'))).toEqual(['repair /dev/fake0']);
  });

  it('runs its transports\' upkeep every upkeepMs from its start, the API reachable or not, past a failing round; a stop ends it', async () => {
    const transport = new UpkeepTransport();
    const api = new ScriptedApi([]);
    // The API cannot be reached for a while: the upkeep runs all the same (what it keeps up is on the host).
    api.registerFailures = Array.from({ length: 1_000 }, () => new BerthError('UNAVAILABLE', 'cannot reach the berth API'));
    const agent = new AgentRunner({ host: hostWith(transport), api, apiUrl: 'http://api.test', version: '0.1.0', upkeepMs: 10, backoff: { firstMs: 1, maxMs: 5 } });
    const running = agent.run();
    await expect.poll(() => transport.rounds, { timeout: 5_000 }).toBeGreaterThanOrEqual(3);
    expect(api.registrations).toHaveLength(0);
    agent.stop();
    await running;
    const after = transport.rounds;
    // Stopped: no round after run() returned (waited on a later round's chance, not a fixed sleep).
    await new Promise((resolve) => setImmediate(resolve));
    expect(transport.rounds).toBe(after);
  });

  it('runs no transport upkeep with the config\'s upkeep.intervalMs 0', async () => {
    const transport = new UpkeepTransport();
    const item = connect('v1');
    const api = new ScriptedApi([[item]]);
    const agent = runner(api, transport);
    const running = agent.run();
    await api.reported.promise;
    agent.stop();
    await running;
    expect(transport.rounds).toBe(0);
  });

  it('runs the items of one volume one after another: a release waits for the connect before it', async () => {
    const transport = new FakeTransport();
    const gate = deferred();
    transport.gate = gate.promise;
    const queued = release('v1');
    const api = new ScriptedApi([[connect('v1'), queued, connect('v2')]]);
    api.expectedReports = 3;
    const agent = runner(api, transport);
    const running = agent.run();
    await expect.poll(() => transport.calls).toEqual(['connect v1', 'connect v2']);
    // The release waits its turn with its lease kept (renewed every third of the 300 ms lease).
    await expect.poll(() => api.renewals.filter((id) => id === queued.item.id).length).toBeGreaterThanOrEqual(2);
    // Each renewal may wait a quarter of the lease for a replica, under the third between two:
    // one gone silent is passed over before the next renewal is due.
    expect(new Set(api.renewLimits)).toEqual(new Set([75]));
    expect(transport.calls).toEqual(['connect v1', 'connect v2']);
    gate.resolve();
    await api.reported.promise;
    agent.stop();
    await running;
    expect(transport.calls.indexOf('disconnect v1')).toBeGreaterThan(transport.calls.indexOf('connected v1'));
  });

  it('runs an item handed out again while its first copy still runs here once, and reports it once', async () => {
    const transport = new FakeTransport();
    const gate = deferred();
    transport.gate = gate.promise;
    const item = connect('v1');
    // The same item in the next claim's answer: its lease passed while this agent was frozen, and
    // the claim after the thaw handed it back to the same worker.
    const again: ClaimedWork = { item: { ...item.item, attempts: 2 }, payload: item.payload };
    const api = new ScriptedApi([[item], [again]]);
    const agent = runner(api, transport);
    const running = agent.run();
    await expect.poll(() => api.claims).toBeGreaterThanOrEqual(3);
    gate.resolve();
    await api.reported.promise;
    agent.stop();
    await running;
    expect(transport.calls).toEqual(['connect v1', 'connected v1']);
    expect(api.reports.map((r) => r.id)).toEqual([item.item.id]);
  });

  it('reads a deadline on the API\'s clock: a host whose clock is behind still aborts the step when the operation\'s time is up', async () => {
    const transport = new FakeTransport();
    transport.gate = new Promise(() => undefined);
    // The API's clock is 60 s ahead of this host's: its deadline, 300 ms away by its clock, read on
    // this host's clock would be a minute away — past the operation's deadline and its undo.
    const apiNow = Date.now() + 60_000;
    const item = work('connect', { transport: 'fake', connection: FILE_CONNECTION, volumeId: 'v1', deadlineAt: new Date(apiNow + 300).toISOString() });
    const ahead: ClaimedWork = {
      ...item,
      item: { ...item.item, leaseExpiresAt: new Date(apiNow + 300).toISOString() },
      handedOutAt: new Date(apiNow).toISOString(),
    };
    const api = new ScriptedApi([[ahead]]);
    api.renewAnswer = async () => ({ leaseExpiresAt: new Date(Date.now() + 60_000 + 300).toISOString() });
    await expectTimedOutSoon(api, transport);
  });

  it('reads no deadline later than its own clock says: an answer handed out long ago (a frozen agent) runs no step past it', async () => {
    const transport = new FakeTransport();
    transport.gate = new Promise(() => undefined);
    // The answer was handed out 60 s ago (the agent was frozen since), its deadline 30 s after
    // that: passed by both clocks. Read against the hand-out time it would seem 30 s away.
    const handedOut = Date.now() - 60_000;
    const item = work('connect', { transport: 'fake', connection: FILE_CONNECTION, volumeId: 'v1', deadlineAt: new Date(handedOut + 30_000).toISOString() });
    const api = new ScriptedApi([[{ ...item, handedOutAt: new Date(handedOut).toISOString() }]]);
    await expectTimedOutSoon(api, transport);
  });

  it('does not run an item whose operation\'s deadline passed before its turn (an agent frozen with it in its socket): reported failed, untouched', async () => {
    const transport = new FakeTransport();
    const handedOut = Date.now() - 60_000;
    const item = work('release', { transport: 'fake', connection: FILE_CONNECTION, volumeId: 'v1', force: false, inUse: [], deadlineAt: new Date(handedOut + 20_000).toISOString() });
    const api = new ScriptedApi([[{ ...item, handedOutAt: new Date(handedOut).toISOString() }]]);
    const states: string[] = [];
    await runUntilReported(api, transport, states);
    expect(transport.calls).toEqual([]);
    expect(api.reports[0]?.outcome).toMatchObject({ state: 'failed', error: { code: 'TIMEOUT', untouched: true } });
    expect(states.some((line) => line.startsWith('did not run release of operation'))).toBe(true);
  });

  it('drops an item whose lease another worker took (409 on renew): the step is aborted, nothing reported', async () => {
    const transport = new FakeTransport();
    transport.gate = new Promise(() => undefined);
    const api = new ScriptedApi([[connect('v1')]]);
    api.renewAnswer = async () => {
      throw new BerthError('CONFLICT', 'work item held by another worker');
    };
    const states: string[] = [];
    const agent = runner(api, transport, states);
    const running = agent.run();
    await expect.poll(() => states.some((s) => s.includes('took it over'))).toBe(true);
    agent.stop();
    await running;
    expect(api.reports).toEqual([]);
  });

  it('drops the outcome on a 409 from report (another worker holds the item now)', async () => {
    const transport = new FakeTransport();
    const api = new ScriptedApi([[connect('v1')]]);
    api.reportAnswer = async () => {
      throw new BerthError('CONFLICT', 'work item held by another worker');
    };
    const states: string[] = [];
    const agent = runner(api, transport, states);
    const running = agent.run();
    await expect.poll(() => states.some((s) => s.includes('dropped the outcome'))).toBe(true);
    agent.stop();
    await running;
    expect(api.reports).toEqual([]);
  });

  it('retries a report while the API is lost and the lease lasts', async () => {
    const transport = new FakeTransport();
    const api = new ScriptedApi([[connect('v1')]]);
    let failures = 2;
    api.reportAnswer = async () => {
      if (failures-- > 0) throw new BerthError('UNAVAILABLE', 'the API restarts');
    };
    const agent = runner(api, transport);
    const running = agent.run();
    await api.reported.promise;
    agent.stop();
    await running;
    expect(api.reports).toHaveLength(1);
    expect(failures).toBe(-1);
  });

  it('keeps trying to register while the API cannot be reached, and gives up on a refused token', async () => {
    const transport = new FakeTransport();
    const api = new ScriptedApi([]);
    api.registerFailures = [
      new BerthError('UNAVAILABLE', 'starting'),
      new BerthError('CONFIG', 'cannot reach', { cause: new Error('ECONNREFUSED') }),
      // A replica in its graceful shutdown (the API's 503): a rolling restart must not stop agents.
      new BerthError('CANCELLED', 'the server is shutting down; retry after it restarts', { details: { retryAfterSeconds: 5 } }),
    ];
    const states: string[] = [];
    const agent = runner(api, transport, states);
    const running = agent.run();
    await expect.poll(() => api.registrations.length).toBe(1);
    agent.stop();
    await running;
    expect(states.filter((s) => s.includes('retrying'))).toHaveLength(1);

    const refused = new ScriptedApi([]);
    refused.registerFailures = [new BerthError('UNAUTHENTICATED', 'bad token')];
    await expect(runner(refused, transport).run()).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
  });

  it('stops saying its host was forgotten when the API no longer knows the host it registered (berth host forget): the devices left here, reconcile, not a plain restart', async () => {
    const transport = new FakeTransport();
    const api = new ScriptedApi([]);
    const claim = api.claim.bind(api);
    let forgotten = false;
    api.claim = async (worker, options) => {
      // What the API answers once `berth host forget h1` removed the host (core's `registeredHost`).
      if (forgotten) throw new BerthError('NOT_FOUND', 'host h1 is not known to the API', { details: { kind: 'host', host: 'h1', reason: 'unknown-host' } });
      forgotten = true;
      return claim(worker, { ...options, signal: AbortSignal.timeout(1) }).catch(() => []);
    };
    const error = (await runner(api, transport).run().catch((e: unknown) => e)) as BerthError;
    expect(api.registrations).toHaveLength(1);
    expect(error).toBeInstanceOf(BerthError);
    expect(error.code).toBe('NOT_FOUND');
    expect(error.message).toMatch(/^host h1 was forgotten at the API \(berth host forget\) while this agent ran: .*devices berth connected on this host .* may still be here/);
    expect(error.details).toEqual({ kind: 'host', host: 'h1', forgotten: true });
    expect(error.hint).toMatch(/^do not just restart the agent/);
    expect(error.hint).toContain('berth reconcile --host h1 --dry-run --api http://api.test');
    expect(error.hint).not.toMatch(/register first/);

    // Any other NOT_FOUND is not taken for a forgotten host.
    const other = new ScriptedApi([]);
    other.claim = async () => {
      throw new BerthError('NOT_FOUND', 'no such route');
    };
    await expect(runner(other, transport).run()).rejects.toMatchObject({ code: 'NOT_FOUND', message: 'no such route' });
  });

  it('a report the API refuses because the host was forgotten says what the step did stays here, not that the API will re-run or undo it', async () => {
    const transport = new FakeTransport();
    const api = new ScriptedApi([[connect('v1')]]);
    api.reportAnswer = async () => {
      throw new BerthError('NOT_FOUND', 'host h1 is not known to the API', { details: { kind: 'host', host: 'h1', reason: 'unknown-host' } });
    };
    const states: string[] = [];
    const agent = runner(api, transport, states);
    const running = agent.run();
    await expect.poll(() => states.some((s) => s.includes('no longer known to the API'))).toBe(true);
    agent.stop();
    await running;
    expect(states.filter((s) => s.includes('could not report'))).toEqual([expect.stringMatching(/this host is no longer known to the API \(forgotten\); what the step did on this host stays$/)]);
  });

  it('on stop: claims nothing more, lets the running item finish and report, then returns', async () => {
    const transport = new FakeTransport();
    const gate = deferred();
    transport.gate = gate.promise;
    const api = new ScriptedApi([[connect('v1')]]);
    const agent = runner(api, transport);
    const running = agent.run();
    await expect.poll(() => transport.calls).toContain('connect v1');
    await expect.poll(() => api.claims).toBe(2);
    agent.stop();
    gate.resolve();
    await running;
    expect(api.reports.map((r) => r.outcome.state)).toEqual(['done']);
    expect(api.claims).toBe(2);
  });
});
