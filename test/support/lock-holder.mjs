// Another process holding berth's SQLite write lock (BEGIN IMMEDIATE) for a while, as a second
// berth command, a backup or a hand-run sqlite3 would. Used by the lock-holder fault tests.
// Usage: lock-holder.mjs <berth.db> <holdMs> [--on-stdin]. With --on-stdin it starts, prints
// "ready", and takes the lock when a line arrives on stdin (so the test controls the moment, not
// the machine's load). Prints "locked" once it holds the lock and "released" when it let go.
import { setTimeout } from 'node:timers';
import Database from 'better-sqlite3';

const [filename, holdMs, mode] = process.argv.slice(2);
const db = new Database(filename, { timeout: 60_000 });

function lock() {
  db.exec('BEGIN IMMEDIATE');
  console.log('locked');
  setTimeout(() => {
    db.exec('COMMIT');
    db.close();
    console.log('released');
    process.exit(0);
  }, Number(holdMs));
}

if (mode === '--on-stdin') {
  console.log('ready');
  process.stdin.once('data', lock);
} else {
  lock();
}
