#!/usr/bin/env node
// Runs every package's tests through turbo (one package at a time: loop devices, tgtd ports and
// the simulated hosts are machine-wide) and closes with each failed test's name and error line,
// then one line that adds up vitest's counts: "N passed, N failed[, N skipped]". The exit code is turbo's. `--continue` runs every package even after
// one fails, so a red run lists all its failures at once.
import { spawn } from 'node:child_process';

const child = spawn('npx', ['turbo', 'run', 'test', '--concurrency=1', '--continue', ...process.argv.slice(2)], {
  stdio: ['ignore', 'pipe', 'pipe'],
  env: { ...process.env, FORCE_COLOR: '0' },
});
const totals = { passed: 0, failed: 0, skipped: 0 };
// Each failed test's name and the first line of its error, repeated after the totals: a CI log
// shown by its tail then still says which tests failed and why (one did not, 2026-12-05).
const failures = [];
let failure;
let pending = '';
const count = (line) => {
  // vitest's summary: "      Tests  31 passed | 2 skipped (33)" or "Tests  1 failed | 30 passed (31)"
  const text = line.replace(/\u001b\[[0-9;]*m/g, '');
  const body = text.replace(/^\S*:test:\s?/, '');
  if (/^\s*FAIL\s+\S/.test(body)) {
    failure = { name: body.trim(), error: undefined };
    failures.push(failure);
  } else if (failure && failure.error === undefined && /\S/.test(body) && !/^\s*[⎯-]+/.test(body)) {
    failure.error = body.trim().slice(0, 300);
  }
  if (!/^\S*:test:\s+Tests\s/.test(text) && !/^\s+Tests\s/.test(text)) return;
  for (const [, n, kind] of text.matchAll(/(\d+) (passed|failed|skipped)/g)) totals[kind] += Number(n);
};
const pipe = (stream, out) =>
  stream.on('data', (chunk) => {
    out.write(chunk);
    pending += chunk.toString();
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    lines.forEach(count);
  });
pipe(child.stdout, process.stdout);
pipe(child.stderr, process.stderr);
child.on('close', (code) => {
  count(pending);
  for (const f of failures) console.log(`${f.name}\n    ${f.error ?? ''}`);
  console.log(`\n${totals.passed} passed, ${totals.failed} failed${totals.skipped ? `, ${totals.skipped} skipped` : ''}`);
  process.exit(code ?? 1);
});
