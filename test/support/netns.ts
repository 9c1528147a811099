// Hosts for the many-hosts suites: each is a network namespace with a veth into one bridge in the
// test's own namespace, so an agent started in it reaches the API on the bridge address and nothing
// else (not 127.0.0.1, where PostgreSQL listens). Only the network is private: processes are entered
// with `nsenter --net`, not `ip netns exec`, which also makes a private mount namespace (FUSE mounts
// and /dev/berth links made there would be invisible to the test).
import { randomBytes } from 'node:crypto';
import { execa, type Options, type ResultPromise } from 'execa';
import { alive } from './orphans.js';

/** One simulated machine: its namespace, its address on the bridge. */
export interface TestHost {
  /** `h1`, `h2`, … — the host name its agent registers as. */
  name: string;
  /** The network namespace (`berth-<run>-h<i>`). */
  netns: string;
  /** Its address on the bridge, e.g. 10.250.37.11. */
  address: string;
}

/** What `makeTestHosts` made, and how to use and remove it. */
export interface TestHosts {
  /** This run's id: every name made carries it. */
  run: string;
  /** The bridge in the test's own namespace. */
  bridge: string;
  /** The bridge's address: what the hosts reach (an API listening there). */
  gateway: string;
  hosts: TestHost[];
  /** Start `file args` in `host`'s network namespace (same mounts, same /dev); killed by `cleanup`. */
  spawnIn(host: TestHost, file: string, args: readonly string[], options?: Options): ResultPromise;
  /** Kill what `spawnIn` started, then delete the namespaces, veths and the bridge. Idempotent. */
  cleanup(): Promise<void>;
}

const IP_TIMEOUT_MS = 10_000;
const KILL_GRACE_MS = 5_000;
/** Every namespace these suites make: `berth-<pid base 36>x<3 random>-h<i>`; the pid owns it. */
const NETNS_PATTERN = /^berth-([0-9a-z]+)x[0-9a-z]{3}-h\d+$/;
/** Every bridge: `bb<run>` (interface names are at most 15 characters). */
const BRIDGE_PATTERN = /^bb([0-9a-z]+)x[0-9a-z]{3}$/;

async function ip(args: readonly string[]): Promise<string> {
  const result = await execa('ip', args, { timeout: IP_TIMEOUT_MS });
  return result.stdout;
}

/** `ip` that may fail (something already gone): clean-up runs every step. */
async function ipQuiet(args: readonly string[]): Promise<void> {
  await execa('ip', args, { timeout: IP_TIMEOUT_MS, reject: false });
}

/** A 10.250.X.0/24 no interface of this namespace uses (other runs' bridges live here too). */
async function freeSubnet(): Promise<number> {
  const used = new Set<number>();
  for (const match of (await ip(['-4', '-o', 'addr'])).matchAll(/inet 10\.250\.(\d+)\./g)) used.add(Number(match[1]));
  const free = Array.from({ length: 254 }, (_, i) => i + 1).filter((x) => !used.has(x));
  const pick = free[Math.floor(Math.random() * free.length)];
  if (pick === undefined) throw new Error('no free 10.250.X.0/24 subnet for test hosts');
  return pick;
}

async function netnsPids(netns: string): Promise<number[]> {
  const result = await execa('ip', ['netns', 'pids', netns], { timeout: IP_TIMEOUT_MS, reject: false });
  return result.stdout
    .split(/\s+/)
    .filter(Boolean)
    .map(Number)
    .filter((pid) => Number.isInteger(pid) && pid > 0);
}

const tick = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * SIGTERM, then SIGKILL what has not gone by the grace. These are not our children (what a killed
 * run left in its namespace), so nothing signals their exit: their liveness is checked each tick.
 */
async function stopPids(pids: readonly number[]): Promise<void> {
  for (const pid of pids) signal(pid, 'SIGTERM');
  const deadline = Date.now() + KILL_GRACE_MS;
  while (pids.some(alive) && Date.now() < deadline) await tick(50);
  for (const pid of pids.filter(alive)) signal(pid, 'SIGKILL');
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // Already gone.
  }
}

/** Our own children: SIGTERM, and SIGKILL when one has not exited by the grace. */
async function stopChildren(children: readonly ResultPromise[]): Promise<void> {
  await Promise.all(
    children.map(async (child) => {
      child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), KILL_GRACE_MS)));
      const outcome = await Promise.race([child.then(() => 'exited' as const, () => 'exited' as const), late]);
      clearTimeout(timer);
      if (outcome === 'late') {
        child.kill('SIGKILL');
        await child.catch(() => undefined);
      }
    }),
  );
}

async function removeNetns(netns: string): Promise<void> {
  // A process still inside keeps the namespace alive after `ip netns del`: stop them first.
  await stopPids(await netnsPids(netns));
  await ipQuiet(['netns', 'del', netns]);
}

/**
 * Make `count` hosts: a bridge `bb<run>` with 10.250.X.1/24 (X free here), and per host a netns
 * `berth-<run>-h<i>` with loopback up and a veth into the bridge at 10.250.X.(10+i)/24.
 */
export async function makeTestHosts(count: number): Promise<TestHosts> {
  const run = `${process.pid.toString(36)}x${randomBytes(2).toString('hex').slice(0, 3)}`;
  const bridge = `bb${run}`;
  const subnet = await freeSubnet();
  const gateway = `10.250.${subnet}.1`;
  const hosts: TestHost[] = [];
  const spawned = new Set<ResultPromise>();
  let cleaned = false;

  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    cleaned = true;
    await stopChildren([...spawned]);
    for (const host of hosts) await removeNetns(host.netns);
    // Deleting a namespace deletes its veth end, and with it the peer; the bridge goes last.
    for (const [i] of hosts.entries()) await ipQuiet(['link', 'del', `vb${run}${i + 1}`]);
    await ipQuiet(['link', 'del', bridge]);
  };

  try {
    await ip(['link', 'add', bridge, 'type', 'bridge']);
    await ip(['addr', 'add', `${gateway}/24`, 'dev', bridge]);
    await ip(['link', 'set', bridge, 'up']);
    for (let i = 1; i <= count; i++) {
      const host: TestHost = { name: `h${i}`, netns: `berth-${run}-h${i}`, address: `10.250.${subnet}.${10 + i}` };
      const outside = `vb${run}${i}`;
      const inside = `vp${run}${i}`;
      await ip(['netns', 'add', host.netns]);
      hosts.push(host);
      await ip(['link', 'add', outside, 'type', 'veth', 'peer', 'name', inside]);
      await ip(['link', 'set', inside, 'netns', host.netns]);
      await ip(['link', 'set', outside, 'master', bridge, 'up']);
      await ip(['-n', host.netns, 'link', 'set', inside, 'name', 'eth0']);
      await ip(['-n', host.netns, 'addr', 'add', `${host.address}/24`, 'dev', 'eth0']);
      await ip(['-n', host.netns, 'link', 'set', 'eth0', 'up']);
      await ip(['-n', host.netns, 'link', 'set', 'lo', 'up']);
    }
  } catch (error) {
    await cleanup();
    throw error;
  }

  const spawnIn = (host: TestHost, file: string, args: readonly string[], options: Options = {}): ResultPromise => {
    if (cleaned) throw new Error(`test hosts ${run} were already removed; not starting ${file}`);
    const child = execa('nsenter', [`--net=/run/netns/${host.netns}`, '--', file, ...args], { reject: false, ...options });
    spawned.add(child);
    void child.finally(() => spawned.delete(child)).catch(() => undefined);
    return child;
  };

  return { run, bridge, gateway, hosts, spawnIn, cleanup };
}

/**
 * Remove the namespaces and bridges of runs whose process is gone (killed before its `cleanup`):
 * the processes still inside them, the namespaces, the bridges. A live run's are left alone.
 */
export async function sweepOrphanedTestHosts(): Promise<string[]> {
  const swept: string[] = [];
  const namespaces = (await ip(['netns', 'list'])).split('\n').map((line) => line.split(' ')[0] ?? '');
  for (const netns of namespaces) {
    const owner = NETNS_PATTERN.exec(netns)?.[1];
    if (owner === undefined || alive(Number.parseInt(owner, 36))) continue;
    await removeNetns(netns);
    swept.push(netns);
  }
  const links = (await ip(['-o', 'link', 'show', 'type', 'bridge'])).matchAll(/^\d+: ([^:@]+)[:@]/gm);
  for (const [, name] of links) {
    const owner = name === undefined ? undefined : BRIDGE_PATTERN.exec(name)?.[1];
    if (name === undefined || owner === undefined || alive(Number.parseInt(owner, 36))) continue;
    await ipQuiet(['link', 'del', name]);
    swept.push(name);
  }
  return swept;
}
