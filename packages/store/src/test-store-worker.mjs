// A second OS process for sqlite-store.e2e.test.ts: it runs berth's built store against the same
// database file as its siblings. Plain JS on purpose: Node 20 cannot run TypeScript itself.
//
//   node test-store-worker.mjs <store entry URL> <database file> open <host name>
//     open the store (running migrations), create a host, print {"ok":true}
//   node test-store-worker.mjs <store entry URL> <database file> cas <project> <counter host id> <seed>
//     open the store, print "ready", wait for "go" on stdin, then for every volume of <project>, in
//     an order shuffled by <seed> (so that siblings meet on the same volumes at the same time):
//     try to reserve it (CAS available -> reserved) and increment the counter host's connector.n
//     in a read-modify-write transaction; print {"wins":[...],"conflicts":n,"errors":[...]}
//   node test-store-worker.mjs <store entry URL> <database file> notify <channel> <payload>
//     open the store, send <payload> on <channel> inside a transaction that commits, then one on
//     <channel> with payload "rolled-back" inside one that rolls back; close; print {"ok":true}
import { createInterface } from 'node:readline';

const [entry, filename, mode, arg1, arg2, arg3] = process.argv.slice(2);
const { openSqliteStore } = await import(entry);

/** Fisher-Yates with mulberry32: the same seed gives the same order. */
function shuffled(items, seed) {
  let state = Number(seed) >>> 0;
  const random = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = [...items];
  for (let i = out.length - 1; i > 0; i -= 1) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

function describe(error) {
  return `${error?.code ?? 'NO_CODE'}: ${error?.message ?? String(error)}`;
}

if (mode === 'open') {
  const store = await openSqliteStore({ filename, busyTimeoutMs: 20000 });
  await store.hosts.create({ name: arg1 });
  await store.close();
  process.stdout.write(`${JSON.stringify({ ok: true })}\n`);
} else if (mode === 'cas') {
  const store = await openSqliteStore({ filename, busyTimeoutMs: 20000 });
  const volumes = shuffled(await store.volumes.list({ projectId: arg1 }), arg3);
  // Build what the race uses (schemas are built on first use, statements prepared once) before
  // "ready", so that neither sibling spends its first rounds on that while the other runs ahead.
  await store.hosts.require(arg2);
  const lines = createInterface({ input: process.stdin });
  const go = new Promise((resolve) => lines.once('line', resolve));
  process.stdout.write('ready\n');
  await go;
  lines.close();

  const wins = [];
  const errors = [];
  let conflicts = 0;
  // Deferred-durable, as berth's own short lock-step writes are: a durable commit holds the write
  // lock through an fsync (0.3–0.8 ms here), and SQLite's busy handler, sleeping 1, 2, 5, 10… ms
  // between tries, then lets the sibling holding the lock win every round (CI15: one worker won
  // all 200). This is a test of the CAS across processes, which durability does not change.
  await store.deferDurability(async () => {
    for (const volume of volumes) {
      try {
        await store.volumes.transition(volume.id, ['available'], 'reserved');
        wins.push(volume.id);
      } catch (error) {
        if (error?.code === 'CONFLICT') conflicts += 1;
        else errors.push(describe(error));
      }
      try {
        await store.transaction(async (tx) => {
          const host = await tx.hosts.require(arg2);
          const n = typeof host.connector?.n === 'number' ? host.connector.n : 0;
          await tx.hosts.setConnector(arg2, { host: host.name, n: n + 1 });
        });
      } catch (error) {
        errors.push(describe(error));
      }
    }
  });
  await store.close();
  process.stdout.write(`${JSON.stringify({ wins, conflicts, errors })}\n`);
} else if (mode === 'notify') {
  const store = await openSqliteStore({ filename, busyTimeoutMs: 20000 });
  await store.transaction(async (tx) => tx.notifications.notify(arg1, arg2));
  await store
    .transaction(async (tx) => {
      await tx.notifications.notify(arg1, 'rolled-back');
      throw new Error('roll back');
    })
    .catch(() => undefined);
  await store.close();
  process.stdout.write(`${JSON.stringify({ ok: true })}\n`);
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
